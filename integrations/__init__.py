"""What the program offers other systems: MQTT and Home Assistant, Prometheus metrics, the SQLite
history behind the charts and the energy counters, and the diagnostics bundle."""
