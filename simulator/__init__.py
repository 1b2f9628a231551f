"""The simulated world for tests, the demo and the benchmark: house and battery physics, Marstek units
on Modbus TCP, grid meters on HTTP. ``python -m simulator`` runs it alone (see ``world.py``)."""
