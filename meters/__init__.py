"""Grid meter drivers beyond the Shelly and the EcoTracker (top level): HomeWizard P1, any JSON meter,
a meter on MQTT, and the reversed-clamp sign check."""
