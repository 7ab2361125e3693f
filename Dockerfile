# The distributed deployment's image: official Airflow 3.3 with this provider baked in
# (never via the runtime pip-requirements variable, which reinstalls on every start).
FROM apache/airflow:3.3.2-python3.11
USER airflow
COPY --chown=airflow:root pyproject.toml README.md /opt/airflow-privacy/
COPY --chown=airflow:root airflow_privacy /opt/airflow-privacy/airflow_privacy
# [cluster]: the Celery provider with celery<5.7 (5.7 removed a module the provider imports),
# the Postgres drivers and Redis; apache-airflow pinned so pip never moves the base image's Airflow.
# The provider has its own privacy accountant (no dp_accounting), so the image passes `pip check`.
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/airflow-privacy[federated,paillier,cluster]" \
 && pip check
# The shared-data volume's mount point, owned by the airflow user: Docker gives a new named
# volume the ownership of the image's folder (docker-compose.yml's airflow-init fixes older ones).
RUN mkdir -p /opt/airflow/shared-data
