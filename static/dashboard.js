/* Dashboard: polls /api/status (every second) and /api/history (every 2 s), draws the live
   values and the charts (uPlot, vendored under static/vendor/uplot).

   The energy figures (today's and the bars per day) come from /api/energy: the server counts them
   and keeps them in its history database, so they survive a restart. The 7-day power chart asks
   /api/history for 5-minute means. With a tariff, /api/energy also has the money per day (cost_eur,
   feed_in_revenue_eur, saved_eur, unpriced_wh): the card shows today's cost and saving, and the
   chart switches between kWh and € per day. With a plan section, /api/plan fills the plan card
   (every 30 s). */
"use strict";

(function () {
  const M = window.Marstek;
  const { t, fmt, api, $, el, setText, fillList, isNum } = M;

  const STATUS_INTERVAL_MS = 1000;
  const HISTORY_INTERVAL_MS = 2000;
  const HIDDEN_INTERVAL_MS = 10000; // while the tab is in the background
  const ERROR_RETRY_MS = 3000;
  const STALE_AFTER_MS = 15000; // updated_at unchanged this long: values are out of date
  const GAP_S = 15; // samples further apart than this are a gap (not integrated, not connected)
  const KEEP_S = 86400 + 600; // samples kept in the browser
  const STANDBY_W = 10; // |battery power| below this shows as standby
  const EVENTS_SHOWN = 100;

  // ------------------------------------------------------------------ status
  let lastUpdatedAt = null;
  let lastUpdatedSeen = Date.now();
  let lastEventsKey = "";

  function renderGrid(s) {
    const card = $("grid-card");
    const w = s.grid_power_w;
    card.classList.toggle("import", isNum(w) && Math.round(w) > 0);
    card.classList.toggle("export", isNum(w) && Math.round(w) < 0);
    let direction = t("grid_no_value");
    let arrow = "";
    if (isNum(w)) {
      if (Math.round(w) > 0) {
        direction = t("grid_import");
        arrow = "↓";
      } else if (Math.round(w) < 0) {
        direction = t("grid_export");
        arrow = "↑";
      } else {
        direction = t("grid_balanced");
      }
    }
    setText("grid-direction", direction);
    setText("grid-arrow", arrow);
    setText("grid-value", isNum(w) ? fmt.int(Math.abs(w)) : t("none_value"));
    $("grid-unit").hidden = !isNum(w);
    setText("grid-avg", isNum(s.grid_power_avg_w) ? t("grid_avg", { value: fmt.watts(s.grid_power_avg_w) }) : "");

    const names = { shelly: "Shelly", ecotracker: "EcoTracker", homewizard: "HomeWizard", http_json: "JSON", mqtt: "MQTT" };
    // The identified model ("Shelly Pro EM-50") once the meter has answered, else the configured type.
    setText("meter-type", s.meter_model || names[s.meter_type] || s.meter_type || t("none_value"));
    const health = $("meter-health");
    health.classList.toggle("ok", !!s.meter_ok);
    health.classList.toggle("bad", !s.meter_ok);
    let healthText = s.meter_ok ? t("meter_ok") : t("meter_error");
    if (!s.meter_ok && s.meter_error_since) healthText = t("meter_error_since", { time: fmt.time(s.meter_error_since) });
    setText("meter-health", healthText);
  }

  function renderControl(s) {
    const state = ["active", "setup", "stopped", "error"].includes(s.control_state) ? s.control_state : "unknown";
    const line = $("control-state");
    line.className = "state state-" + state;
    setText("control-state-text", t("state_" + state));
    const statusKey = "status_" + (s.status || "");
    setText("control-status", s.status && state === "active" ? t(statusKey) : "");
    setText("control-reason", state === "active" || state === "error" ? s.reason || "" : "");
    setText("updated-at", s.updated_at ? t("updated_at", { time: fmt.time(s.updated_at) }) : "");
    $("setup-banner").hidden = !s.setup_mode;
  }

  function renderBanners(s) {
    const warnings = Array.isArray(s.warnings) ? s.warnings : [];
    $("warnings").hidden = warnings.length === 0;
    fillList("warnings-list", warnings);
    const errors = Array.isArray(s.errors) ? s.errors : [];
    $("errors").hidden = errors.length === 0;
    fillList("errors-list", errors);
  }

  function batteryCard(b) {
    const card = el("article", "card battery");
    card.dataset.key = String(b.key || b.id);
    const head = el("div", "battery-head");
    head.append(el("h3", null, b.name || t("battery_name", { id: b.id })), el("span", "pill online-pill"));
    const unit = el("p", "muted small unit-info",
      t("battery_unit_info", { id: b.id, register_set: b.register_set || "", max: b.max_power_w || "" }));
    const bar = el("div", "soc-bar");
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-label", t("battery_soc"));
    bar.append(el("div", "soc-fill"));
    const socRow = el("div", "soc-row");
    socRow.append(el("span", "muted", t("battery_soc")), el("span", "soc-label"));
    const power = el("p", "battery-power");
    power.append(el("span", "watts"), el("span", "verb"));
    const kv = el("dl", "kv");
    kv.append(el("dt", null, t("battery_setpoint")), el("dd", "setpoint"), el("dt", null, t("battery_mode")),
      el("dd", "mode"));
    const note = el("p", "muted small note");
    card.append(head, unit, socRow, bar, power, kv, note);
    return card;
  }

  function updateBattery(card, b) {
    card.classList.toggle("offline", !b.online);
    const pill = card.querySelector(".online-pill");
    pill.textContent = b.online ? t("battery_online") : t("battery_offline");
    pill.classList.toggle("ok", !!b.online);
    pill.classList.toggle("bad", !b.online);

    const soc = isNum(b.soc_pct) ? Math.max(0, Math.min(100, b.soc_pct)) : null;
    const bar = card.querySelector(".soc-bar");
    const fill = card.querySelector(".soc-fill");
    fill.style.width = (soc === null ? 0 : soc) + "%";
    fill.classList.toggle("low", soc !== null && soc < 15);
    card.querySelector(".soc-label").textContent = fmt.pct(soc);
    if (soc === null) bar.removeAttribute("aria-valuenow");
    else bar.setAttribute("aria-valuenow", String(Math.round(soc)));

    const p = b.power_w;
    const power = card.querySelector(".battery-power");
    let verb = t("none_value");
    let cls = "";
    if (isNum(p)) {
      if (p >= STANDBY_W) {
        verb = t("battery_discharging");
        cls = "discharging";
      } else if (p <= -STANDBY_W) {
        verb = t("battery_charging");
        cls = "charging";
      } else {
        verb = t("battery_standby");
      }
    }
    power.className = "battery-power " + cls;
    power.querySelector(".watts").textContent = isNum(p) ? fmt.watts(Math.abs(p)) : t("none_value");
    power.querySelector(".verb").textContent = isNum(p) ? verb : "";
    card.querySelector(".setpoint").textContent = fmt.watts(isNum(b.setpoint_w) ? Math.abs(b.setpoint_w) : null);
    card.querySelector(".mode").textContent = t("mode_" + b.mode);
    card.querySelector(".note").textContent = b.note || "";
  }

  // One grid of cards; with several gateways one titled group per gateway (in the order of the config).
  function renderBatteries(list) {
    const box = $("batteries");
    const batteries = Array.isArray(list) ? list : [];
    $("no-batteries").hidden = batteries.length > 0;
    const gateways = [...new Set(batteries.map((b) => b.gateway || ""))];
    const grouped = gateways.length > 1;
    const shape = (grouped ? "g|" : "") + batteries.map((b) => (b.gateway || "") + "/" + (b.key || b.id)).join(",");
    if (box.dataset.shape !== shape) {
      box.dataset.shape = shape;
      box.classList.toggle("grid", !grouped);
      box.classList.toggle("grid-fit", !grouped);
      if (grouped) {
        box.replaceChildren(...gateways.map((gw) => {
          const group = el("section", "gateway-group");
          group.dataset.gateway = gw;
          const cards = el("div", "grid grid-fit gateway-cards");
          cards.append(...batteries.filter((b) => (b.gateway || "") === gw).map(batteryCard));
          group.append(el("h3", "gateway-title", t("gateway_group", { gateway: gw })), cards);
          return group;
        }));
      } else {
        box.replaceChildren(...batteries.map(batteryCard));
      }
    }
    const cards = box.querySelectorAll(".battery");
    const byKey = new Map(Array.from(cards).map((c) => [c.dataset.key, c]));
    batteries.forEach((b) => updateBattery(byKey.get(String(b.key || b.id)), b));
  }

  // Known control-quality figures in this order; unknown ones follow under their own key.
  const QUALITY_ORDER = ["rms_error_w", "time_in_band_pct", "band_crossings_per_h", "writes_per_h",
    "import_wh_today", "export_wh_today", "battery_export_wh_today"];

  function qualityValue(key, value) {
    if (!isNum(value)) return t("none_value");
    if (/_wh(_|$)/.test(key)) return fmt.energy(value);
    if (/_w$/.test(key)) return fmt.watts(value);
    if (/_pct$/.test(key)) return fmt.pct(value);
    return fmt.number(value);
  }

  function renderQuality(q) {
    const figures = q && typeof q === "object" ? q : {};
    const keys = QUALITY_ORDER.filter((k) => k in figures)
      .concat(Object.keys(figures).filter((k) => !QUALITY_ORDER.includes(k)));
    $("quality-card").hidden = keys.length === 0;
    const items = keys.map((key) => {
      const wrap = el("div");
      wrap.append(el("dt", null, t("quality_" + key)), el("dd", null, qualityValue(key, figures[key])));
      return wrap;
    });
    $("quality").replaceChildren(...items);
  }

  function renderEvents(events) {
    const list = Array.isArray(events) ? events : [];
    const last = list.length ? list[list.length - 1] : null;
    const key = list.length + "|" + (last ? last.time + last.message : "");
    if (key === lastEventsKey) return;
    lastEventsKey = key;
    $("events-empty").hidden = list.length > 0;
    const items = list.slice(-EVENTS_SHOWN).reverse().map((e) => {
      const li = el("li", "event");
      const time = el("time", null, fmt.time(e.time));
      time.setAttribute("datetime", e.time);
      const level = el("span", "level level-" + e.level, t("level_" + e.level));
      li.append(time, level, el("span", "msg", e.message));
      return li;
    });
    $("events").replaceChildren(...items);
  }

  function renderStale(s) {
    if (s.updated_at !== lastUpdatedAt) {
      lastUpdatedAt = s.updated_at;
      lastUpdatedSeen = Date.now();
    }
    const stale = Date.now() - lastUpdatedSeen > STALE_AFTER_MS;
    $("stale").hidden = !stale;
    if (stale) setText("stale", t("err_stale", { time: fmt.time(s.updated_at) }));
  }

  // ------------------------------------------------------------------ operating mode
  const MODES = ["auto", "hold", "charge", "off"];
  let lastMode = null;

  /** "1 h 05 min" / "12 min" / "< 1 min" for a duration in milliseconds. */
  function remainingText(ms) {
    const minutes = Math.ceil(ms / 60000);
    if (minutes < 1) return "< 1 min";
    const h = Math.floor(minutes / 60);
    const m = minutes % 60;
    return h > 0 ? h + " h " + String(m).padStart(2, "0") + " min" : m + " min";
  }

  function renderMode(m, setupMode) {
    if (!m || !MODES.includes(m.mode)) return;
    lastMode = m;
    for (const b of document.querySelectorAll("[data-mode]")) {
      b.setAttribute("aria-pressed", String(b.dataset.mode === m.mode));
    }
    setText("mode-hint", t("opmode_hint_" + m.mode, { power: fmt.watts(m.power_w) }));
    const until = $("mode-until");
    until.hidden = !m.until;
    if (m.until) {
      const left = new Date(m.until).getTime() - Date.now();
      setText("mode-until", t("opmode_until", { time: fmt.hm(m.until), remaining: remainingText(Math.max(0, left)) }));
    }
    setText("mode-source", t("opmode_source", { source: t("opmode_source_" + m.source) }));
    $("mode-setup").hidden = !setupMode;
  }

  const modeError = $("mode-error");
  for (const button of document.querySelectorAll("[data-mode]")) {
    if (M.auth.required && !M.auth.loggedIn) button.disabled = true; // read-only without login
    button.addEventListener("click", async () => {
      const body = { mode: button.dataset.mode };
      const minutes = $("mode-minutes").value;
      if (minutes && body.mode !== "auto") body.minutes = Number(minutes);
      modeError.hidden = true;
      try {
        renderMode(await api.post("/api/mode", body), false);
      } catch (err) {
        modeError.hidden = false;
        modeError.textContent = M.errorText(err);
      }
    });
  }

  function renderStatus(s) {
    renderMode(s.operating_mode, !!s.setup_mode);
    renderBanners(s);
    renderGrid(s);
    renderControl(s);
    renderBatteries(s.batteries);
    renderQuality(s.quality);
    renderEvents(s.events);
    renderStale(s);
  }

  // ------------------------------------------------------------------ history, energy, chart
  const H = { t: [], grid: [], batt: [], soc: [] };
  let lastT = null; // newest sample time (server clock, epoch s)
  let rangeS = 1800;

  const ENERGY_INTERVAL_MS = 10000;
  const WEEK_INTERVAL_MS = 60000;
  const WEEK_S = 7 * 86400;
  const WEEK_STEP_S = 300;
  const DAY_S = 86400;

  const energy = { days: [], shownDays: 7, unit: "kwh" };

  /** True when the server values the energy (a tariff is configured): the day items have the money keys. */
  function hasMoney() {
    return energy.days.some((d) => "cost_eur" in d);
  }

  function renderEnergy() {
    const today = energy.days.length ? energy.days[energy.days.length - 1] : null;
    if (!today) return;
    setText("energy-imported", fmt.energy(today.import_wh));
    setText("energy-exported", fmt.energy(today.export_wh));
    setText("energy-charged", fmt.energy(today.charge_wh));
    setText("energy-discharged", fmt.energy(today.discharge_wh));
    setText("energy-avoided", isNum(today.avoided_import_wh) ? fmt.energy(today.avoided_import_wh) : t("none_value"));
    const need = today.discharge_wh + today.import_wh;
    setText("energy-share", need > 0 ? fmt.pct((100 * today.discharge_wh) / need) : t("none_value"));
    const money = hasMoney();
    $("energy-cost-row").hidden = !money;
    $("energy-saved-row").hidden = !money;
    $("energy-money-hint").hidden = !money;
    $("energy-unit").hidden = !money;
    setText("energy-cost", fmt.eur(today.cost_eur));
    setText("energy-saved", fmt.eur(today.saved_eur));
    $("energy-saved").classList.toggle("gain", isNum(today.saved_eur) && today.saved_eur > 0.005);
    $("energy-saved").classList.toggle("loss", isNum(today.saved_eur) && today.saved_eur < -0.005);
    const unpriced = money && isNum(today.unpriced_wh) && today.unpriced_wh >= 1;
    $("energy-unpriced").hidden = !unpriced;
    setText("energy-unpriced", unpriced ? t("energy_unpriced", { energy: fmt.energy(today.unpriced_wh) }) : "");
    if (!money && energy.unit === "eur") setEnergyUnit("kwh");
  }

  /** Local noon of a "YYYY-MM-DD" day, epoch s (the bar's place on the time axis). */
  function dayNoon(date) {
    const [y, m, d] = date.split("-").map(Number);
    return new Date(y, m - 1, d, 12, 0, 0).getTime() / 1000;
  }

  function energyData() {
    const days = energy.days.slice(-energy.shownDays);
    const kwh = (v) => (isNum(v) ? v / 1000 : null);
    const eur = (v) => (isNum(v) ? v : null);
    if (energy.unit === "eur") {
      return [
        days.map((d) => dayNoon(d.date)),
        days.map((d) => eur(d.cost_eur)),
        days.map((d) => (isNum(d.feed_in_revenue_eur) ? -d.feed_in_revenue_eur : null)),
        days.map((d) => eur(d.saved_eur)),
      ];
    }
    return [
      days.map((d) => dayNoon(d.date)),
      days.map((d) => kwh(d.import_wh)),
      days.map((d) => (isNum(d.export_wh) ? -d.export_wh / 1000 : null)),
      days.map((d) => kwh(d.discharge_wh)),
      days.map((d) => (isNum(d.charge_wh) ? -d.charge_wh / 1000 : null)),
    ];
  }

  /** The axis style of the bar charts, or null when the vendored uPlot (with bars) did not load. */
  function barChartStyle() {
    if (typeof window.uPlot !== "function" || !window.uPlot.paths || !window.uPlot.paths.bars) return null;
    const text = cssVar("--text", "#1b2530");
    const line = cssVar("--line", "#dde3e9");
    return { axis: { stroke: text, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } } };
  }

  let energyChart = null;
  let energyObserver = null;
  const dayFmt = new Intl.DateTimeFormat(M.locale, { day: "2-digit", month: "2-digit" });
  const weekdayFmt = new Intl.DateTimeFormat(M.locale, { weekday: "short", day: "2-digit", month: "2-digit" });

  function makeEnergyChart() {
    const box = $("energy-chart");
    const style = barChartStyle();
    if (style === null) return null;
    const { axis } = style;
    // Two bars per day: grid (import up, export down) left of the day, batteries (discharge up, charge down) right.
    const left = window.uPlot.paths.bars({ size: [0.38, 40], align: -1 });
    const right = window.uPlot.paths.bars({ size: [0.38, 40], align: 1 });
    const inEur = energy.unit === "eur";
    const kwhValue = (u, v) => (isNum(v) ? fmt.energy(Math.abs(v) * 1000) : t("none_value"));
    const eurValue = (u, v) => (isNum(v) ? fmt.eur(v) : t("none_value"));
    const bar = (label, color, paths, value) => ({ label, stroke: color, fill: color, width: 0, paths,
      points: { show: false }, scale: "kwh", value: value || kwhValue });
    const bars = inEur ? [
      bar(t("energy_chart_cost"), cssVar("--import", "#c2410c"), left, eurValue),
      // The revenue is drawn below zero; its legend shows the amount received.
      bar(t("energy_chart_revenue"), cssVar("--export", "#15803d"), left, (u, v) => eurValue(u, isNum(v) ? -v : v)),
      bar(t("energy_chart_saved"), cssVar("--battery", "#2563eb"), right, eurValue),
    ] : [
      bar(t("energy_imported"), cssVar("--import", "#c2410c"), left),
      bar(t("energy_exported"), cssVar("--export", "#15803d"), left),
      bar(t("energy_discharged"), cssVar("--battery", "#2563eb"), right),
      bar(t("energy_charged"), cssVar("--soc", "#7c3aed"), right),
    ];
    const opts = {
      width: Math.max(200, box.clientWidth),
      height: chartHeight(),
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      legend: { live: true },
      scales: {
        x: { time: true, range: (u, min, max) => [(isNum(min) ? min : 0) - DAY_S / 2, (isNum(max) ? max : 0) + DAY_S / 2] },
        kwh: {
          range: (u, min, max) => {
            const lo = Math.min(isNum(min) ? min : 0, -0.01);
            const hi = Math.max(isNum(max) ? max : 0, 0.01);
            const pad = (hi - lo) * 0.08;
            return [lo - pad, hi + pad];
          },
        },
      },
      series: [
        { label: t("energy_chart_day"), value: (u, v) => (v === null ? "" : weekdayFmt.format(new Date(v * 1000))) },
        ...bars,
      ],
      axes: [
        Object.assign({}, axis, {
          space: 44,
          incrs: [DAY_S, 2 * DAY_S, 7 * DAY_S],
          values: (u, vals) => vals.map((v) => (v === null ? "" : dayFmt.format(new Date(v * 1000)))),
        }),
        Object.assign({}, axis, {
          scale: "kwh", size: 58, label: inEur ? t("unit_eur") : t("unit_kwh"), labelSize: 18,
          values: (u, vals) => vals.map((v) => (v === null ? "" : inEur ? fmt.money(v) : fmt.number(v))),
        }),
      ],
    };
    const u = new window.uPlot(opts, energyData(), box);
    energyObserver = resizeWith(u, box);
    return u;
  }

  function redrawEnergyChart() {
    const any = energy.unit === "eur"
      ? energy.days.some((d) => isNum(d.cost_eur) || isNum(d.saved_eur))
      : energy.days.some((d) => d.import_wh || d.export_wh || d.charge_wh || d.discharge_wh);
    $("energy-chart-empty").hidden = any;
    if (!energyChart) energyChart = makeEnergyChart();
    if (energyChart) energyChart.setData(energyData());
  }

  /** kWh or € per day: the series differ, so the chart is built anew. */
  function setEnergyUnit(unit) {
    if (unit === energy.unit) return;
    energy.unit = unit;
    for (const b of document.querySelectorAll("[data-unit]")) b.setAttribute("aria-pressed", String(b.dataset.unit === unit));
    setText("energy-chart-hint", t(unit === "eur" ? "energy_chart_hint_eur" : "energy_chart_hint"));
    if (energyObserver) energyObserver.disconnect();
    if (energyChart) energyChart.destroy();
    energyChart = null;
    energyObserver = null;
    redrawEnergyChart();
  }

  for (const button of document.querySelectorAll("[data-unit]")) {
    button.addEventListener("click", () => setEnergyUnit(button.dataset.unit));
  }

  for (const button of document.querySelectorAll("[data-days]")) {
    button.addEventListener("click", () => {
      energy.shownDays = Number(button.dataset.days);
      for (const b of document.querySelectorAll("[data-days]")) b.setAttribute("aria-pressed", String(b === button));
      redrawEnergyChart();
    });
  }

  /** Follow the box's width; returns the observer (null without ResizeObserver) to disconnect with the chart. */
  function resizeWith(u, box) {
    if (typeof ResizeObserver !== "function") return null;
    const observer = new ResizeObserver(() => {
      const w = Math.max(200, box.clientWidth);
      if (w !== u.width || chartHeight() !== u.height) u.setSize({ width: w, height: chartHeight() });
    });
    observer.observe(box);
    return observer;
  }

  // The 7-day power chart: 5-minute means, a null where a gap (program not running) lies.
  const W = { t: [], grid: [], batt: [], soc: [] };
  let weekChart = null;

  function setWeek(d) {
    for (const k of Object.keys(W)) W[k] = [];
    if (!d || !Array.isArray(d.t)) return;
    for (let i = 0; i < d.t.length; i++) {
      if (i > 0 && d.t[i] - d.t[i - 1] > 2.5 * WEEK_STEP_S) {
        W.t.push(d.t[i - 1] + 1);
        W.grid.push(null);
        W.batt.push(null);
        W.soc.push(null);
      }
      W.t.push(d.t[i]);
      W.grid.push(isNum(d.grid_w[i]) ? d.grid_w[i] : null);
      W.batt.push(isNum(d.battery_w[i]) ? d.battery_w[i] : null);
      W.soc.push(isNum(d.soc_pct[i]) ? d.soc_pct[i] : null);
    }
  }

  function redrawWeekChart() {
    $("week-chart-empty").hidden = W.t.length > 0;
    if (!weekChart) {
      const box = $("week-chart");
      weekChart = makeLineChart(box, () => {
        const end = Date.now() / 1000;
        return [end - WEEK_S, end];
      }, (v, incr) => (incr < DAY_S ? fmt.hm(v * 1000) : dayFmt.format(new Date(v * 1000))), [W.t, W.grid, W.batt, W.soc]);
    }
    if (weekChart) weekChart.setData([W.t, W.grid, W.batt, W.soc]);
  }

  function appendHistory(d) {
    if (!d || !Array.isArray(d.t)) return 0;
    let added = 0;
    for (let i = 0; i < d.t.length; i++) {
      const cur = { t: d.t[i], grid: d.grid_w[i], batt: d.battery_w[i], soc: d.soc_pct[i] };
      if (!isNum(cur.t) || (lastT !== null && cur.t <= lastT)) continue;
      if (lastT !== null && cur.t - lastT > GAP_S) {
        // A gap (program not running): a null point keeps the chart from joining across it.
        H.t.push(lastT + 0.001);
        H.grid.push(null);
        H.batt.push(null);
        H.soc.push(null);
      }
      H.t.push(cur.t);
      H.grid.push(isNum(cur.grid) ? cur.grid : null);
      H.batt.push(isNum(cur.batt) ? cur.batt : null);
      H.soc.push(isNum(cur.soc) ? cur.soc : null);
      lastT = cur.t;
      added++;
    }
    if (lastT !== null) {
      let drop = 0;
      while (drop < H.t.length && H.t[drop] < lastT - KEEP_S) drop++;
      if (drop > 0) for (const k of Object.keys(H)) H[k].splice(0, drop);
    }
    return added;
  }

  let chart = null;

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function chartHeight() {
    return window.innerWidth < 600 ? 230 : 300;
  }

  function makeChart() {
    // The chosen range, or less while the history is shorter (the chart then shows all there is).
    const range = () => {
      const end = lastT !== null ? lastT : Date.now() / 1000;
      const first = H.t.length ? H.t[0] : end;
      return [Math.max(end - rangeS, Math.min(first, end - 60)), end];
    };
    // Ticks closer than a minute get seconds (a young history spans only a few minutes).
    const tick = (v, incr) => (incr < 60 ? fmt.time(v * 1000) : fmt.hm(v * 1000));
    return makeLineChart($("chart"), range, tick, [H.t, H.grid, H.batt, H.soc]);
  }

  /** A power chart (grid, batteries, SoC) over time in ``box``; ``range`` gives the x range, ``tick`` a label. */
  function makeLineChart(box, range, tick, data) {
    if (typeof window.uPlot !== "function") return null;
    const text = cssVar("--text", "#1b2530");
    const line = cssVar("--line", "#dde3e9");
    const axis = { stroke: text, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    const wattsAxis = (u, vals) => vals.map((v) => (v === null ? "" : fmt.int(v)));
    const opts = {
      width: Math.max(200, box.clientWidth),
      height: chartHeight(),
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        x: { time: true, range },
        w: {
          range: (u, min, max) => {
            const lo = Math.min(isNum(min) ? min : 0, -100);
            const hi = Math.max(isNum(max) ? max : 0, 100);
            const pad = (hi - lo) * 0.08;
            return [lo - pad, hi + pad];
          },
        },
        soc: { range: [0, 100] },
      },
      series: [
        { label: t("chart_time"), value: (u, v) => (v === null ? "" : fmt.dateTime(v * 1000)) },
        {
          label: t("chart_grid"), scale: "w", stroke: cssVar("--import", "#c2410c"), width: 1.5,
          value: (u, v) => fmt.watts(v),
        },
        {
          label: t("chart_battery"), scale: "w", stroke: cssVar("--battery", "#2563eb"), width: 1.5,
          value: (u, v) => fmt.watts(v),
        },
        {
          label: t("chart_soc"), scale: "soc", stroke: cssVar("--soc", "#7c3aed"), width: 1.5, dash: [6, 4],
          value: (u, v) => fmt.pct(v),
        },
      ],
      axes: [
        Object.assign({}, axis, {
          values: (u, vals, axisIdx, space, incr) => vals.map((v) => (v === null ? "" : tick(v, incr))),
          space: 70,
        }),
        Object.assign({}, axis, { scale: "w", values: wattsAxis, size: 58, label: t("unit_w"), labelSize: 18 }),
        Object.assign({}, axis, {
          scale: "soc", side: 1, size: 52, grid: { show: false },
          values: (u, vals) => vals.map((v) => (v === null ? "" : fmt.int(v) + " " + t("unit_pct"))),
        }),
      ],
    };
    const u = new window.uPlot(opts, data, box);
    resizeWith(u, box);
    return u;
  }

  function redrawChart() {
    $("chart-empty").hidden = H.t.length > 0;
    if (!chart) chart = makeChart();
    if (chart) chart.setData([H.t, H.grid, H.batt, H.soc]);
  }

  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      rangeS = Number(button.dataset.range);
      for (const b of document.querySelectorAll("[data-range]")) b.setAttribute("aria-pressed", String(b === button));
      redrawChart();
    });
  }


  // ------------------------------------------------------------------ plan by price
  // GET /api/plan: the slots from the current one on. Price bars (ct/kWh, left axis, negative below zero),
  // planned SoC (right axis), PV and load forecasts (W, own axis on wide screens), the mode per slot as a
  // band along the bottom and a line at "now" (drawn in the draw hook, so they follow resizes).
  const PLAN_INTERVAL_MS = 30000;
  const PLAN_MODES = ["auto", "hold", "charge"];
  const plan = { doc: null };
  let planChart = null;
  let planShape = ""; // which forecast series the chart has: built anew when that changes

  function planSlots() {
    return plan.doc && Array.isArray(plan.doc.slots) ? plan.doc.slots : [];
  }

  /** Which forecasts the plan has ("pv", "load"): only those get a line. */
  function planForecasts() {
    return ["pv", "load"].filter((k) => planSlots().some((s) => isNum(s[k + "_w"])));
  }

  /** Columns for uPlot: slot starts plus the last slot's end (so the last bar has its width). */
  function planData() {
    const slots = planSlots();
    const sec = (iso) => new Date(iso).getTime() / 1000;
    const num = (v) => (isNum(v) ? v : null);
    const x = slots.map((s) => sec(s.start));
    if (slots.length) x.push(sec(slots[slots.length - 1].end));
    const col = (f) => slots.map(f).concat(slots.length ? [null] : []);
    return [
      x,
      col((s) => num(s.import_ct_per_kwh)),
      col((s) => num(s.soc_pct)),
      ...planForecasts().map((k) => col((s) => num(s[k + "_w"]))),
      col((s) => PLAN_MODES.indexOf(s.mode)),
    ];
  }

  function modeColor(mode) {
    return cssVar("--plan-" + mode, { auto: "#94a3b8", hold: "#d97706", charge: "#2563eb" }[mode] || "#94a3b8");
  }

  /** The mode band under the plot area and the "now" line, in canvas pixels. */
  function drawPlanOverlay(u) {
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    const band = Math.round(10 * (window.devicePixelRatio || 1));
    const slots = planSlots();
    const x = u.data[0];
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    for (let i = 0; i < slots.length; i++) {
      const x0 = Math.round(u.valToPos(x[i], "x", true));
      const x1 = Math.round(u.valToPos(x[i + 1], "x", true));
      ctx.fillStyle = modeColor(slots[i].mode);
      ctx.fillRect(x0, top + height - band, Math.max(1, x1 - x0), band);
    }
    const now = Date.now() / 1000;
    if (x.length && now >= x[0] && now <= x[x.length - 1]) {
      const px = Math.round(u.valToPos(now, "x", true)) + 0.5;
      ctx.strokeStyle = cssVar("--text", "#1b2530");
      ctx.lineWidth = Math.max(1, window.devicePixelRatio || 1);
      ctx.setLineDash([4, 3]);
      ctx.beginPath();
      ctx.moveTo(px, top);
      ctx.lineTo(px, top + height - band);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = cssVar("--text", "#1b2530");
      ctx.font = Math.round(11 * (window.devicePixelRatio || 1)) + "px sans-serif";
      ctx.textBaseline = "top";
      ctx.fillText(t("plan_now"), px + 4, top + 2);
    }
    ctx.restore();
  }

  function makePlanChart() {
    const box = $("plan-chart");
    const style = barChartStyle();
    if (style === null) return null;
    const { axis } = style;
    const forecasts = planForecasts();
    const wide = window.innerWidth >= 600 && forecasts.length > 0;
    const ct = (v) => fmt.number(v) + "\u00a0" + t("unit_ct");
    const none = () => null;
    const opts = {
      width: Math.max(200, box.clientWidth),
      height: chartHeight(),
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      legend: { live: true },
      scales: {
        x: { time: true, range: (u, min, max) => [min, max] },
        ct: {
          range: (u, min, max) => {
            const lo = Math.min(isNum(min) ? min : 0, 0);
            const hi = Math.max(isNum(max) ? max : 0, 1);
            const pad = (hi - lo) * 0.12; // room for the mode band below the lowest bar
            return [lo - pad, hi + pad * 0.5];
          },
        },
        soc: { range: [0, 100] },
        w: { range: (u, min, max) => [0, Math.max(isNum(max) ? max : 0, 100) * 1.1] },
        mode: { range: [0, 1] },
      },
      series: [
        { label: t("plan_time"), value: (u, v) => (v === null ? "" : dayFmt.format(new Date(v * 1000)) + " " + fmt.hm(v * 1000)) },
        {
          label: t("plan_price"), scale: "ct", stroke: cssVar("--import", "#c2410c"), fill: cssVar("--plan-price", "rgba(194, 65, 12, 0.45)"),
          width: 0, paths: window.uPlot.paths.bars({ size: [0.9, Infinity], align: 1 }), points: { show: false },
          value: (u, v) => (isNum(v) ? ct(v) : t("none_value")),
        },
        {
          label: t("plan_soc"), scale: "soc", stroke: cssVar("--soc", "#7c3aed"), width: 2,
          value: (u, v) => fmt.pct(v),
        },
        ...forecasts.map((k) => ({
          label: t("plan_" + k), scale: "w", width: 1.5, dash: k === "pv" ? [6, 4] : [2, 3],
          stroke: k === "pv" ? cssVar("--export", "#15803d") : cssVar("--muted", "#5b6875"),
          value: (u, v) => fmt.watts(v),
        })),
        {
          label: t("plan_mode"), scale: "mode", stroke: modeColor("auto"), width: 0, paths: none, points: { show: false },
          value: (u, v) => (PLAN_MODES[v] ? t("plan_band_" + PLAN_MODES[v]) : t("none_value")),
        },
      ],
      axes: [
        Object.assign({}, axis, {
          space: 44,
          values: (u, vals, axisIdx, space, incr) => vals.map((v) => (v === null ? "" : incr < DAY_S ? fmt.hm(v * 1000) : dayFmt.format(new Date(v * 1000)))),
        }),
        Object.assign({}, axis, {
          scale: "ct", size: 50, label: t("unit_ct"), labelSize: 18,
          values: (u, vals) => vals.map((v) => (v === null ? "" : fmt.number(v))),
        }),
        Object.assign({}, axis, {
          scale: "soc", side: 1, size: 46, grid: { show: false },
          values: (u, vals) => vals.map((v) => (v === null ? "" : fmt.int(v) + " " + t("unit_pct"))),
        }),
        Object.assign({}, axis, {
          scale: "w", side: 1, size: 58, grid: { show: false }, show: wide,
          values: (u, vals) => vals.map((v) => (v === null ? "" : fmt.int(v) + " " + t("unit_w"))),
        }),
      ],
      hooks: { draw: [drawPlanOverlay] },
    };
    const u = new window.uPlot(opts, planData(), box);
    u.observer = resizeWith(u, box);
    return u;
  }

  function renderPlan() {
    const d = plan.doc;
    const card = $("plan-card");
    card.hidden = !d || !d.enabled;
    if (card.hidden) return;
    const slots = planSlots();
    const problem = !d.ok && d.problem ? d.problem : "";
    $("plan-problem").hidden = !problem;
    setText("plan-problem", problem);
    $("plan-empty").hidden = slots.length > 0;
    const box = $("plan-chart");
    box.hidden = slots.length === 0;
    const current = slots.length ? slots[0] : null; // the API starts with the current slot
    $("plan-reason").hidden = !current;
    if (current) {
      setText("plan-reason-time", " (" + fmt.hm(current.start) + "–" + fmt.hm(current.end) + ")");
      const pill = $("plan-reason-mode");
      pill.className = "pill plan-mode-" + current.mode;
      pill.textContent = PLAN_MODES.includes(current.mode) ? t("plan_band_" + current.mode) : String(current.mode);
      setText("plan-reason-text", current.reason || ""); // the reason names the power of a charge
    }
    const costs = isNum(d.expected_cost_eur) || isNum(d.expected_cost_without_plan_eur);
    $("plan-costs").hidden = !costs;
    setText("plan-cost", fmt.eur(d.expected_cost_eur));
    setText("plan-cost-without", fmt.eur(d.expected_cost_without_plan_eur));
    // Without a load forecast (no history yet) the costs hold only the planned grid charging.
    $("plan-costs-no-load").hidden = !costs || planSlots().some((s) => isNum(s.load_w));
    setText("plan-created", d.created ? t("plan_created", { time: fmt.hm(d.created) }) : "");
    if (slots.length === 0) return;
    const shape = planForecasts().join(",");
    if (planChart && shape !== planShape) {
      if (planChart.observer) planChart.observer.disconnect();
      planChart.destroy();
      planChart = null;
    }
    planShape = shape;
    if (!planChart) planChart = makePlanChart();
    if (planChart) planChart.setData(planData());
  }

  async function pollPlan() {
    let next = PLAN_INTERVAL_MS;
    try {
      plan.doc = await api.get("/api/plan");
      renderPlan();
    } catch (err) {
      next = ERROR_RETRY_MS;
    }
    setTimeout(pollPlan, delay(next));
  }

  // ------------------------------------------------------------------ polling
  function delay(normalMs) {
    return document.hidden ? HIDDEN_INTERVAL_MS : normalMs;
  }

  function showConnection(err) {
    const box = $("conn-error");
    box.hidden = !err;
    if (err) box.textContent = M.errorText(err);
  }

  async function pollStatus() {
    let next = STATUS_INTERVAL_MS;
    try {
      const s = await api.get("/api/status");
      showConnection(null);
      renderStatus(s);
    } catch (err) {
      showConnection(err);
      next = ERROR_RETRY_MS;
    }
    setTimeout(pollStatus, delay(next));
  }

  async function pollHistory() {
    let next = HISTORY_INTERVAL_MS;
    try {
      const q = lastT === null ? "" : "?since=" + encodeURIComponent(String(lastT));
      const d = await api.get("/api/history" + q);
      appendHistory(d);
      redrawChart();
    } catch (err) {
      next = ERROR_RETRY_MS;
    }
    setTimeout(pollHistory, delay(next));
  }

  async function pollEnergy() {
    let next = ENERGY_INTERVAL_MS;
    try {
      const d = await api.get("/api/energy?days=30");
      energy.days = Array.isArray(d.days) ? d.days : [];
      $("energy-unavailable").hidden = true;
      renderEnergy();
      redrawEnergyChart();
    } catch (err) {
      $("energy-unavailable").hidden = err.status !== 503;
      next = ERROR_RETRY_MS;
    }
    setTimeout(pollEnergy, delay(next));
  }

  async function pollWeek() {
    let next = WEEK_INTERVAL_MS;
    try {
      const since = Math.floor(Date.now() / 1000 - WEEK_S);
      setWeek(await api.get("/api/history?since=" + since + "&step=" + WEEK_STEP_S));
      redrawWeekChart();
    } catch (err) {
      next = ERROR_RETRY_MS;
    }
    setTimeout(pollWeek, delay(next));
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && chart) redrawChart();
  });

  // For the browser tests and for curious users in the developer tools.
  window.marstekDashboard = {
    history: H, energy, week: W, chart: () => chart, energyChart: () => energyChart, weekChart: () => weekChart,
    mode: () => lastMode, plan, planChart: () => planChart,
  };

  pollStatus();
  pollHistory();
  pollEnergy();
  pollWeek();
  pollPlan();
})();
