/* The settings page: the tariff, forecast and plan sections of config.json (GET/POST /api/settings).
   The server validates with the config loader; this page only collects the fields shown for the chosen type.
   The tariff's token is write-only: the server never sends it back ("unchanged" placeholder). */
"use strict";

(function () {
  const { t, api, ApiError, errorText, $, el } = window.Marstek;
  const form = $("settings-form");

  /** A number input's value: absent (undefined) when empty; a text the loader will name when not a number. */
  function numberOf(input) {
    if (input.validity && input.validity.badInput) return "not a number";
    if (input.value.trim() === "") return undefined;
    const value = Number(input.value);
    return Number.isFinite(value) ? value : input.value;
  }

  function setNumber(input, value) {
    input.value = typeof value === "number" ? String(value) : "";
  }

  function put(target, key, value) {
    if (value !== undefined && value !== "") target[key] = value;
  }

  function labelled(text, input) {
    const label = el("label", null, text);
    label.append(input);
    return label;
  }

  function input(type, cls, value) {
    const node = document.createElement("input");
    node.type = type;
    node.className = cls;
    if (type === "number") {
      node.step = "any";
      node.inputMode = "decimal";
      setNumber(node, value);
    } else {
      node.value = value || "";
    }
    return node;
  }

  function removeButton(row) {
    const button = el("button", "btn btn-small remove-row", t("settings_remove"));
    button.type = "button";
    button.addEventListener("click", () => row.remove());
    return button;
  }

  // ------------------------------------------------------------------ rows (windows, planes)
  function addWindow(w) {
    const row = el("div", "form-row row-item window-row");
    const from = input("text", "w-from", w && w.from);
    from.placeholder = "22:00";
    const to = input("text", "w-to", w && w.to);
    to.placeholder = "06:00";
    row.append(labelled(t("settings_window_from"), from), labelled(t("settings_window_to"), to),
      labelled(t("settings_window_ct"), input("number", "w-ct", w && w.ct_per_kwh)), removeButton(row));
    $("tariff-windows").append(row);
  }

  const PLANE_KEYS = ["lat", "lon", "declination", "azimuth", "kwp"];

  function addPlane(p) {
    const row = el("div", "form-row row-item plane-row");
    for (const key of PLANE_KEYS) {
      row.append(labelled(t("settings_plane_" + key), input("number", "p-" + key, p && p[key])));
    }
    row.append(removeButton(row));
    $("forecast-planes").append(row);
  }

  // ------------------------------------------------------------------ show fields by type
  function showByType() {
    const tariff = $("tariff-type").value;
    for (const node of form.querySelectorAll("[data-types]")) {
      node.hidden = !node.dataset.types.split(" ").includes(tariff);
    }
    const forecast = $("forecast-type").value;
    for (const node of form.querySelectorAll("[data-forecast]")) {
      node.hidden = !node.dataset.forecast.split(" ").includes(forecast);
    }
  }

  function visible(id) {
    return !$(id).closest("[hidden]");
  }

  // ------------------------------------------------------------------ fill from / collect to JSON
  function fill(data) {
    const tariff = data.tariff || {};
    $("tariff-type").value = tariff.type || "";
    $("tariff-url").value = tariff.url || "";
    $("tariff-zone").value = tariff.bidding_zone || "";
    $("tariff-token").value = "";
    $("tariff-token").placeholder = data.token_set ? t("settings_token_unchanged") : t("settings_token_empty");
    setNumber($("tariff-fixed"), tariff.fixed_ct_per_kwh);
    setNumber($("tariff-markup"), tariff.markup_ct_per_kwh);
    setNumber($("tariff-vat"), tariff.vat_pct);
    setNumber($("tariff-feed-in"), tariff.feed_in_ct_per_kwh);
    $("tariff-windows").replaceChildren();
    for (const w of Array.isArray(tariff.windows) ? tariff.windows : []) addWindow(w);

    const forecast = data.forecast || {};
    $("forecast-type").value = forecast.type || "";
    $("forecast-url").value = forecast.url || "";
    $("forecast-planes").replaceChildren();
    for (const p of Array.isArray(forecast.planes) ? forecast.planes : []) addPlane(p);

    const plan = data.plan || {};
    $("plan-enabled").checked = plan.enabled === true;
    setNumber($("plan-reserve"), plan.reserve_soc_pct);
    setNumber($("plan-grid-charge"), plan.grid_charge_max_w);
    setNumber($("plan-wear"), plan.wear_ct_per_kwh);
    setNumber($("plan-peak"), plan.peak_import_limit_w);
    showByType();
  }

  function collectTariff() {
    const type = $("tariff-type").value;
    if (!type) return null;
    const tariff = { type };
    if (visible("tariff-url")) put(tariff, "url", $("tariff-url").value.trim());
    if (visible("tariff-zone")) put(tariff, "bidding_zone", $("tariff-zone").value.trim());
    if (visible("tariff-token")) put(tariff, "token", $("tariff-token").value.trim());  // empty: keep the stored one
    if (visible("tariff-fixed")) {
      put(tariff, "fixed_ct_per_kwh", numberOf($("tariff-fixed")));
      const windows = [...$("tariff-windows").querySelectorAll(".window-row")].map((row) => {
        const w = {};
        put(w, "from", row.querySelector(".w-from").value.trim());
        put(w, "to", row.querySelector(".w-to").value.trim());
        put(w, "ct_per_kwh", numberOf(row.querySelector(".w-ct")));
        return w;
      });
      if (windows.length) tariff.windows = windows;
    }
    if (visible("tariff-markup")) {
      put(tariff, "markup_ct_per_kwh", numberOf($("tariff-markup")));
      put(tariff, "vat_pct", numberOf($("tariff-vat")));
    }
    put(tariff, "feed_in_ct_per_kwh", numberOf($("tariff-feed-in")));
    return tariff;
  }

  function collectForecast() {
    const type = $("forecast-type").value;
    if (!type) return null;
    const forecast = { type };
    if (type !== "none") {
      put(forecast, "url", $("forecast-url").value.trim());
      forecast.planes = [...$("forecast-planes").querySelectorAll(".plane-row")].map((row) => {
        const p = {};
        for (const key of PLANE_KEYS) put(p, key, numberOf(row.querySelector(".p-" + key)));
        return p;
      });
    }
    return forecast;
  }

  function collectPlan() {
    const plan = { enabled: $("plan-enabled").checked };
    put(plan, "reserve_soc_pct", numberOf($("plan-reserve")));
    put(plan, "grid_charge_max_w", numberOf($("plan-grid-charge")));
    put(plan, "wear_ct_per_kwh", numberOf($("plan-wear")));
    put(plan, "peak_import_limit_w", numberOf($("plan-peak")));
    // Nothing entered and off: no plan section (as before).
    return Object.keys(plan).length === 1 && !plan.enabled ? null : plan;
  }

  // ------------------------------------------------------------------ load and save
  function showError(err, problems) {
    const list = problems && problems.length ? problems : [errorText(err)];
    $("settings-problems").replaceChildren(...list.map((p) => el("li", null, p)));
    $("settings-login").hidden = !(err instanceof ApiError && err.status === 401);
    $("settings-error").hidden = false;
  }

  async function load() {
    try {
      const data = await api.get("/api/settings");
      fill(data);
      form.hidden = false;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) showError(err);
    } finally {
      $("settings-loading").hidden = true;
    }
  }

  async function save(event) {
    event.preventDefault();
    $("settings-error").hidden = true;
    $("settings-saved").hidden = true;
    const button = $("settings-save");
    button.disabled = true;
    button.textContent = t("settings_saving");
    const body = { tariff: collectTariff(), forecast: collectForecast(), plan: collectPlan() };
    try {
      fill(await api.post("/api/settings", body));
      $("settings-saved").hidden = false;
    } catch (err) {
      const problems = err instanceof ApiError && err.status === 400 && err.data ? err.data.problems : null;
      showError(err instanceof ApiError ? err : new ApiError(String(err && err.message ? err.message : err), 0),
        problems);
    } finally {
      button.disabled = false;
      button.textContent = t("settings_save");
    }
  }

  $("tariff-type").addEventListener("change", showByType);
  $("forecast-type").addEventListener("change", showByType);
  $("add-window").addEventListener("click", () => addWindow(null));
  $("add-plane").addEventListener("click", () => addPlane(null));
  form.addEventListener("submit", save);
  load();
})();
