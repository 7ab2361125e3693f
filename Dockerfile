# The distributed deployment's image: official Airflow 3.3 with this provider baked in
# (never via the runtime pip-requirements variable, which reinstalls on every start).
FROM apache/airflow:3.3.2-python3.11
USER airflow
COPY --chown=airflow:root pyproject.toml README.md /opt/airflow-privacy/
COPY --chown=airflow:root airflow_privacy /opt/airflow-privacy/airflow_privacy
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir "/opt/airflow-privacy[federated,paillier]" "apache-airflow-providers-celery" \
 && pip install --no-cache-dir --no-deps "dp-accounting==0.6.0"
