"""Triggers (run in Airflow's triggerer): waits on other parties that hold no worker slot."""
