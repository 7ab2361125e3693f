-- Separate database for the privacy budget ledger (DESIGN §4): it must survive resets of
-- Airflow's metadata DB.
CREATE DATABASE privacy OWNER airflow;
