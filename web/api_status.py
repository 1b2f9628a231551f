"""The read side of the JSON API: status, history, energy, plan, Prometheus metrics, diagnostics."""

from __future__ import annotations

import contextlib
import datetime
import math
import time

from flask import Flask, Response, abort, jsonify, request

from control import i18n
from control.status_store import HistorySample
from integrations import metrics
from integrations.history import HistoryBusy, PriceAt, bucket_samples
from planning.plan_mode import plan_json
from web.common import DAY_S, ApiError, Deps, json_body


def import_price_ct(price_at: PriceAt) -> float | None:
    """The import price in force now, ct/kWh (None: no slot covers now)."""
    price = price_at(time.time())
    return price.import_ct_per_kwh if price is not None else None


def finite_arg(name: str) -> float | None:
    """The query argument ``name`` as a finite number (epoch seconds), None when absent."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(f"{name} must be a number (epoch seconds)") from None
    if not math.isfinite(value):
        raise ApiError(f"{name} must be a finite number (epoch seconds)")
    return value


def step_arg() -> int | None:
    """?step=<s>: the bucket width of /api/history in seconds, None when absent."""
    step = request.args.get("step")
    if step is None:
        return None
    if not step.isdigit() or not 1 <= int(step) <= 86400:
        raise ApiError("step must be an integer 1..86400 (seconds)")
    return int(step)


def history_samples(deps: Deps, since_t: float | None, step_s: int | None) -> list[HistorySample]:
    """The samples of /api/history: memory (this run) and, for older ones, the history file."""
    history = deps.history
    lower_t = since_t if since_t is not None else time.time() - DAY_S
    samples: list[HistorySample] | None = None
    if step_s is not None:
        if history is not None:
            with contextlib.suppress(HistoryBusy):  # busy: the day in memory
                samples = history.samples(lower_t, None, step_s)
        if samples is None:
            samples = bucket_samples(deps.store.history(lower_t), step_s)
        return samples
    memory = deps.store.history(since_t)  # no since: all of memory (2 h), the rest of the day from the file
    samples = list(memory)
    if history is not None and (not memory or memory[0].t > lower_t):
        # Older than this run's memory: from the file (the memory's samples are in it too: skip those).
        with contextlib.suppress(HistoryBusy):  # busy: what is in memory
            samples = history.samples(lower_t, memory[0].t if memory else None) + samples
    return samples


def register(app: Flask, deps: Deps) -> None:
    """GET /api/status, /api/history, /api/energy, /api/plan, /metrics, /api/diagnostics."""
    history = deps.history
    price_at = history.price_at if history is not None else None  # set only with a tariff
    registry = metrics.make_registry(
        deps.store,
        import_price_ct=(lambda: import_price_ct(price_at)) if price_at is not None else None,
        money_totals=history.money_totals if history is not None and price_at is not None else None)

    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(deps.store.status_json(deps.language()))

    @app.get("/api/history")
    def api_history() -> Response:
        """Chart samples newer than ?since= (epoch seconds; default: the last day), also from before the last
        restart; ?step=<s> averages them into buckets of that many seconds (long ranges)."""
        since_t = finite_arg("since")
        samples = history_samples(deps, since_t, step_arg())
        return jsonify(
            t=[s.t for s in samples],
            grid_w=[s.grid_w for s in samples],
            battery_w=[s.battery_w for s in samples],
            soc_pct=[s.soc_pct for s in samples],
        )

    @app.get("/api/energy")
    def api_energy() -> Response | tuple[Response, int, dict[str, str]]:
        """Energy per local day, the last ?days=N (1..366, default 7), oldest first, today included."""
        raw = request.args.get("days", "7")
        if not raw.isdigit() or not 1 <= int(raw) <= 366:
            raise ApiError(f"days must be an integer 1..366, got {raw!r}")
        if history is None:
            return jsonify(error="no history database in this program"), 503, {}
        try:
            days = history.energy_days(int(raw))
        except HistoryBusy as exc:
            return jsonify(error=str(exc)), 503, {"Retry-After": "5"}
        return jsonify(days=days)

    @app.get("/api/plan")
    def api_plan() -> Response:
        """The plan by price (planning/plan_mode.py), from the current slot on; messages in the page's language."""
        now = datetime.datetime.now(datetime.timezone.utc)
        return jsonify(i18n.render(plan_json(deps.store.plan(), deps.store.plan_enabled(), now), deps.language()))

    @app.post("/api/plan/enabled")
    def api_plan_enabled() -> Response:
        """The plan switch (planning/plan_switch.py): off, the plan is still computed and shown, not applied."""
        data = json_body({"enabled": bool}, required=("enabled",))
        if not isinstance(data["enabled"], bool):
            raise ApiError("enabled must be true or false")
        source = "dashboard" if request.headers.get("Origin") else "api"
        if not deps.store.set_plan_enabled(data["enabled"], source):
            raise ApiError(i18n.Msg("plan_not_configured"), 409)
        return jsonify(enabled=deps.store.plan_enabled())

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition(registry, request.headers.get("Accept"))
        return Response(body, headers={"Content-Type": content_type})

    @app.get("/api/diagnostics")
    def api_diagnostics() -> Response:
        if deps.diagnostics is None:
            abort(404)
        response = jsonify(deps.diagnostics())
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        response.headers["Content-Disposition"] = f'attachment; filename="marstek-diagnose-{stamp}.json"'
        return response
