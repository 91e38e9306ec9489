"""What people do with the champion: its history, a rollback, and the event that tells Airflow it moved."""
