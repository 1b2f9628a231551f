"""GET /metrics (metrics.py), read back with prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from control.status_store import BatteryStatus, CommandQueue, StatusSnapshot, StatusStore
from tests.helpers import wait_until
from tests.test_web import basic, live_system, web_cfg
from web_server import create_app

CONTRACT = {
    "marstek_grid_power_watts", "marstek_meter_ok", "marstek_battery_power_watts", "marstek_battery_soc_percent",
    "marstek_battery_setpoint_watts", "marstek_battery_online", "marstek_modbus_writes",
    "marstek_meter_failures", "marstek_control_cycles",
}


def scrape(client: Any, **kwargs: Any) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family name: {(sample name, labels): value}} of one scrape."""
    resp = client.get("/metrics", **kwargs)
    assert resp.status_code == 200, resp.data
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        families[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return families


def snapshot(**changes: Any) -> StatusSnapshot:
    values: dict[str, Any] = {
        "grid_power_w": -123.0, "meter_ok": True, "control_state": "active",
        "batteries": (BatteryStatus(1, True, 55.0, -800, -790.0, "charge", key="10.0.0.5:502/1", uid="keller"),
                      BatteryStatus(2, False, None, 0, None, "idle", key="10.0.0.5:502/2", name="Akku Süd")),
        "counters": {"control_cycles_total": 10, "modbus_writes_total": 4, "meter_failures_total": 1},
    }
    values.update(changes)
    return StatusSnapshot(**values)


def test_metrics_have_the_contract_names_labels_and_values() -> None:
    store = StatusStore()
    store.publish(snapshot())
    m = scrape(create_app(store, CommandQueue(), web_cfg()).test_client())
    assert set(m) >= CONTRACT
    assert m["marstek_grid_power_watts"] == {("marstek_grid_power_watts", ()): -123.0}
    assert m["marstek_meter_ok"][("marstek_meter_ok", ())] == 1
    # The label is the stable uid (the config's, else the slug of the name), never the address.
    b1, b2 = (("battery", "keller"),), (("battery", "akku_sued"),)
    assert m["marstek_battery_power_watts"] == {("marstek_battery_power_watts", b1): -790.0}, "unknown is absent"
    assert m["marstek_battery_soc_percent"] == {("marstek_battery_soc_percent", b1): 55.0}
    assert m["marstek_battery_setpoint_watts"][("marstek_battery_setpoint_watts", b1)] == -800
    assert m["marstek_battery_online"] == {("marstek_battery_online", b1): 1, ("marstek_battery_online", b2): 0}
    assert m["marstek_control_cycles"][("marstek_control_cycles_total", ())] == 10
    assert m["marstek_modbus_writes"][("marstek_modbus_writes_total", ())] == 4
    assert m["marstek_meter_failures"][("marstek_meter_failures_total", ())] == 1


def test_unknown_grid_power_is_absent_not_zero() -> None:
    store = StatusStore()
    store.publish(snapshot(grid_power_w=None, meter_ok=False))
    m = scrape(create_app(store, CommandQueue(), web_cfg()).test_client())
    assert m["marstek_grid_power_watts"] == {}
    assert m["marstek_meter_ok"][("marstek_meter_ok", ())] == 0


def test_counters_never_go_backwards() -> None:
    store = StatusStore()
    client = create_app(store, CommandQueue(), web_cfg()).test_client()
    store.publish(snapshot())
    first = scrape(client)["marstek_control_cycles"][("marstek_control_cycles_total", ())]
    store.publish(snapshot(counters={}))  # e.g. a snapshot published by someone else than the loop
    second = scrape(client)["marstek_control_cycles"][("marstek_control_cycles_total", ())]
    assert second == first == 10


def test_metrics_from_the_running_control_count_up(tmp_path: Path) -> None:
    with live_system(tmp_path) as live:
        first = scrape(live.client)
        name = ("marstek_control_cycles_total", ())
        wait_until(lambda: scrape(live.client)["marstek_control_cycles"][name] > first["marstek_control_cycles"][name],
                   10, "the control cycle counter counts up")
        m = scrape(live.client)
        assert m["marstek_modbus_writes"][("marstek_modbus_writes_total", ())] >= 1
        uids = {b["uid"] for b in live.client.get("/api/status").get_json()["batteries"]}
        assert uids == {"akku_1", "akku_2"}
        assert {labels for _, labels in m["marstek_battery_online"]} == {(("battery", u),) for u in uids}
        assert set(m) >= CONTRACT


def test_metrics_follow_read_only_without_login() -> None:
    store = StatusStore()
    open_app = create_app(store, CommandQueue(), web_cfg(password="pw-123", read_only_without_login=True))
    assert open_app.test_client().get("/metrics").status_code == 200
    closed = create_app(store, CommandQueue(), web_cfg(password="pw-123", read_only_without_login=False))
    client = closed.test_client()
    resp = client.get("/metrics")
    assert resp.status_code == 401 and "password" in resp.get_json()["error"]
    scrape(client, headers=basic("pw-123"))


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    store = StatusStore()
    store.publish(snapshot())
    resp = create_app(store, CommandQueue(), web_cfg()).test_client().get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    names = {f.name for f in parse_openmetrics(resp.get_data(as_text=True))}
    assert names >= CONTRACT


def test_money_metrics_with_a_tariff_survive_a_restart_and_parse(tmp_path: Path) -> None:
    import time

    from integrations.history import History, prices_from
    from tests.test_money import Prices, slot, steady

    now = time.time()
    hour = now - now % 3600
    prices = Prices([slot(hour - 3600, 60, 30.0, 8.0), slot(hour, 60, -1.5, 0.0)])
    path = tmp_path / "h.sqlite3"
    h1 = History(path, price_at=prices_from(prices))
    h1.add(steady(hour - 3600, 3600, 600.0, 400.0))  # the last hour: 0.6 kWh import at 30 ct, 0.4 kWh discharge
    h1.close()
    h2 = History(path, price_at=prices_from(prices))  # a restart: the counters come back from the file
    m = scrape(create_app(StatusStore(), CommandQueue(), web_cfg(), history=h2).test_client())
    assert m["marstek_import_price_ct_per_kwh"] == {("marstek_import_price_ct_per_kwh", ()): -1.5}
    assert m["marstek_cost_eur"] == {("marstek_cost_eur_total", ()): 0.18}
    assert m["marstek_saved_eur"] == {("marstek_saved_eur_total", ()): 0.12}
    assert m["marstek_saved_negative_eur"][("marstek_saved_negative_eur_total", ())] == 0
    assert m["marstek_cost_negative_eur"][("marstek_cost_negative_eur_total", ())] == 0
    # No price for now (the fetcher lost them): the gauge is absent, never 0; the counters stay.
    prices.state = None
    m = scrape(create_app(StatusStore(), CommandQueue(), web_cfg(), history=h2).test_client())
    assert m["marstek_import_price_ct_per_kwh"] == {}
    assert m["marstek_cost_eur"] == {("marstek_cost_eur_total", ()): 0.18}


def test_no_money_metrics_without_a_tariff(tmp_path: Path) -> None:
    from integrations.history import History

    m = scrape(create_app(StatusStore(), CommandQueue(), web_cfg(), history=History(tmp_path / "h.db")).test_client())
    assert not {"marstek_import_price_ct_per_kwh", "marstek_cost_eur", "marstek_saved_eur"} & set(m)


def test_the_plan_mode_is_an_enum_gauge_and_absent_without_a_plan() -> None:
    from datetime import datetime, timedelta, timezone

    from tests.test_plan_mode import plan_at, slot

    store = StatusStore()
    store.publish(snapshot())
    client = create_app(store, CommandQueue(), web_cfg()).test_client()
    without = scrape(client)
    assert "marstek_plan_mode" not in without and "marstek_plan_enabled" not in without
    now = datetime.now(timezone.utc)
    store.publish_plan(plan_at(now, slot(now - timedelta(minutes=5), "charge", 1200)))
    store.init_plan_switch(True)
    m = scrape(client)
    assert m["marstek_plan_mode"] == {("marstek_plan_mode", (("mode", "auto"),)): 0,
                                      ("marstek_plan_mode", (("mode", "hold"),)): 0,
                                      ("marstek_plan_mode", (("mode", "charge"),)): 1}
    assert m["marstek_plan_enabled"] == {("marstek_plan_enabled", ()): 1}
    store.set_plan_enabled(False, "api")
    assert scrape(client)["marstek_plan_enabled"] == {("marstek_plan_enabled", ()): 0}
    store.publish_plan(plan_at(now - timedelta(hours=1), slot(now - timedelta(minutes=5), "charge", 1200)))
    stale = scrape(client)["marstek_plan_mode"]  # a stale plan does not drive: auto
    assert stale[("marstek_plan_mode", (("mode", "auto"),))] == 1
    assert stale[("marstek_plan_mode", (("mode", "charge"),))] == 0
