"""What operators read: charts (and markdown) for the Prefect UI's artifacts."""
