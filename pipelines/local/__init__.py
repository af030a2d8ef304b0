"""What only a developer's machine needs: the demo, a local Airflow, demo traffic, the Compose
stack helper and the StatsD exporter. Nothing in a step pod or a serving replica imports it."""
