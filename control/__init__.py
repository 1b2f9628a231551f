"""The control's helpers around the law (``zero_feed_control.py``): the control thread, the fleet of
gateways, operating modes, the status store the threads share, setup commands, the watchdog, live
control quality, ``--check``, the driver interfaces, the Marstek register table and the UI texts."""
