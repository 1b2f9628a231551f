"""Planning by price and forecast: price and PV sources, the pure planner, and the plan thread.

The fast loop (zero feed-in, ``zero_feed_control.py``) stays as it is; the plan only chooses the
operating mode per slot (``auto`` / ``hold`` / ``charge P``) and is one more mode source
(``source: "plan"``), below every manual source. ``model.py`` holds the shared data types.
"""
