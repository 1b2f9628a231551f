/* Modbus ID setup page: every action goes through the JSON API (/api/setup/...), the page shows
   the API's answers and error messages. While setup mode is on, leaving the page asks first. */
"use strict";

(function () {
  const M = window.Marstek;
  const { t, fmt, api, $, el, setText, isNum } = M;

  const STATUS_INTERVAL_MS = 2000;
  const MAX_SCAN_IDS = 50;

  let setupMode = false;
  let busy = false;
  let proposedId = null; // the last next_free_id put into the new-ID field

  // ------------------------------------------------------------------ state and buttons
  function updateButtons() {
    $("enter-btn").disabled = busy || setupMode;
    for (const b of document.querySelectorAll(".needs-setup")) {
      b.disabled = busy || !setupMode;
      b.title = setupMode ? "" : t("need_setup_mode");
    }
    $("add-btn").disabled = busy;
    $("step-enter").classList.toggle("done", setupMode);
  }

  function setSetupMode(on, controlState) {
    setupMode = !!on;
    const state = on ? "setup" : controlState || "active";
    const known = ["active", "setup", "stopped", "error"].includes(state) ? state : "unknown";
    $("setup-state").className = "state state-banner state-" + known;
    setText("setup-state-text", t("state_" + known));
    updateButtons();
  }

  // ------------------------------------------------------------------ gateways
  /** Fill the gateway choice from /api/status (several gateways: the user picks which one to work on). */
  function updateGateways(batteries) {
    const list = Array.isArray(batteries) ? batteries : [];
    const gateways = [...new Set(list.map((b) => b.gateway).filter((g) => g))];
    const select = $("gateway-select");
    const shown = Array.from(select.options).map((o) => o.value).join(",");
    if (shown !== gateways.join(",")) {
      const keep = select.value;
      select.replaceChildren(...gateways.map((gw) => {
        const units = list.filter((b) => b.gateway === gw);
        const option = el("option", null, t("gateway_option", {
          gateway: gw, register_set: units[0].register_set || "", names: units.map((b) => b.name).join(", "),
        }));
        option.value = gw;
        return option;
      }));
      if (gateways.includes(keep)) select.value = keep;
    }
    $("gateway-row").hidden = gateways.length < 2;
  }

  /** The chosen gateway as request fields (nothing when there is only one). */
  function gatewayField() {
    const select = $("gateway-select");
    return select.options.length > 1 && select.value ? { gateway: select.value } : {};
  }

  async function pollStatus() {
    try {
      const s = await api.get("/api/status");
      $("conn-error").hidden = true;
      updateGateways(s.batteries);
      if (!busy) setSetupMode(s.setup_mode, s.control_state);
    } catch (err) {
      const box = $("conn-error");
      box.hidden = false;
      box.textContent = M.errorText(err);
    }
    setTimeout(pollStatus, STATUS_INTERVAL_MS);
  }

  // ------------------------------------------------------------------ results
  /** Show lines of text (and optional extra nodes) in a step's result box. */
  function showResult(id, kind, lines, extra) {
    const box = $(id);
    box.hidden = false;
    box.className = "result" + (kind ? " " + kind : "");
    const nodes = lines.filter((s) => s).map((s) => el("p", null, s));
    box.replaceChildren(...nodes, ...(extra || []));
  }

  function showError(id, err) {
    const extra = [];
    if (err instanceof M.ApiError && err.status === 401) {
      const link = el("a", null, t("nav_login"));
      link.href = "/login?next=" + encodeURIComponent("/setup");
      extra.push(link);
    }
    showResult(id, "bad", [M.errorText(err)], extra);
  }

  /** Run one API action with the buttons locked; errors go to the step's result box. */
  async function action(resultId, runningText, fn) {
    if (busy) return;
    busy = true;
    updateButtons();
    showResult(resultId, "", [runningText || t("busy")]);
    try {
      await fn();
    } catch (err) {
      showError(resultId, err);
    } finally {
      busy = false;
      updateButtons();
    }
  }

  function intValue(inputId) {
    const raw = $(inputId).value.trim();
    return /^\d+$/.test(raw) ? Number(raw) : NaN;
  }

  function idList(ids) {
    return "[" + (Array.isArray(ids) ? ids.join(", ") : "") + "]";
  }

  // ------------------------------------------------------------------ 1. enter setup mode
  $("enter-btn").addEventListener("click", () =>
    action("enter-result", null, async () => {
      const r = await api.post("/api/setup/enter", {});
      setSetupMode(r.setup_mode);
      const failures = Array.isArray(r.stop_failures) ? r.stop_failures : [];
      if (failures.length) {
        const list = el("ul");
        list.append(...failures.map((f) => el("li", null, f)));
        showResult("enter-result", "bad", [t("step1_done"), t("step1_stop_failures")], [list]);
      } else {
        showResult("enter-result", "ok", [t("step1_done")]);
      }
    }),
  );

  // ------------------------------------------------------------------ 2. scan
  // The result box is rewritten while a scan runs: keep the table and the proposal line at hand.
  const scanTable = $("scan-table");
  const scanRows = $("scan-rows");
  const nextFree = $("next-free");

  $("scan-btn").addEventListener("click", () => {
    const first = intValue("scan-first");
    const last = intValue("scan-last");
    if (!(first >= 1 && last <= 247 && last >= first && last - first < MAX_SCAN_IDS)) {
      showResult("scan-result", "bad", [t("scan_range_invalid")]);
      $("scan-result").hidden = false;
      return;
    }
    scanTable.hidden = true;
    nextFree.hidden = true;
    action("scan-result", t("scan_running", { first, last }), async () => {
      const r = await api.post("/api/setup/scan", { first_id: first, last_id: last, ...gatewayField() });
      const found = Array.isArray(r.found) ? r.found : [];
      const box = $("scan-result");
      box.hidden = false;
      box.className = "result";
      const summary = el("p", "scan-summary",
        found.length ? t("scan_found", { count: found.length }) : t("scan_none", { first, last }));
      const rows = found.map((f) => {
        const tr = el("tr");
        tr.append(el("td", null, String(f.id)), el("td", null, f.model || t("none_value")),
          el("td", null, fmt.pct(f.soc_pct)));
        return tr;
      });
      scanRows.replaceChildren(...rows);
      scanTable.hidden = found.length === 0;
      nextFree.hidden = !isNum(r.next_free_id);
      if (isNum(r.next_free_id)) {
        nextFree.textContent = t("next_free", { id: r.next_free_id });
        const input = $("new-id");
        if (input.value === "" || Number(input.value) === proposedId) input.value = String(r.next_free_id);
        proposedId = r.next_free_id;
      }
      const note = r.note ? [el("p", "banner banner-warning scan-note", r.note)] : [];
      box.replaceChildren(summary, ...note, scanTable, nextFree);
    });
  });

  // ------------------------------------------------------------------ 3. set ID 1 -> new ID
  $("set-btn").addEventListener("click", () => {
    const newId = intValue("new-id");
    if (!(newId >= 2 && newId <= 247)) {
      showResult("set-result", "bad", [t("new_id_invalid")]);
      $("new-id").focus();
      return;
    }
    if (!window.confirm(t("set_confirm", { id: newId }))) {
      showResult("set-result", "", [t("set_cancelled")]);
      return;
    }
    action("set-result", t("set_running", { id: newId }), async () => {
      const r = await api.post("/api/setup/set-id", { new_id: newId, ...gatewayField() });
      showResult("set-result", r.ok ? "ok" : "bad", [
        t("set_ok", { id: r.new_id }),
        t("set_details", { model: r.model || t("none_value"), soc: fmt.pct(r.soc_pct) }),
        r.verified ? t("set_verified") : "",
      ]);
      $("add-id").value = String(r.new_id);
      if (r.in_config) showResult("add-result", "ok", [t("already_in_config", { id: r.new_id })]);
      else $("add-result").hidden = true;
      $("step-set").classList.add("done");
    });
  });

  // ------------------------------------------------------------------ 4. add to config.json
  $("add-btn").addEventListener("click", () => {
    const id = intValue("add-id");
    if (!(id >= 1 && id <= 247)) {
      showResult("add-result", "bad", [t("new_id_invalid")]);
      $("add-id").focus();
      return;
    }
    action("add-result", null, async () => {
      const r = await api.post("/api/setup/add-to-config", { id, ...gatewayField() });
      // The seed form answers with battery.akku_ids, the units form with every unit's key.
      const seed = Array.isArray(r.akku_ids);
      const suffix = seed ? "" : "_units";
      const ids = seed ? idList(r.akku_ids) : idList(r.units);
      let text = t("add_not_saved" + suffix, { ids });
      if (r.saved) text = t("add_saved" + suffix, { ids });
      else if (r.message) text = t("add_already" + suffix, { id, ids });
      showResult("add-result", "ok", [text]);
      $("step-add").classList.add("done");
    });
  });

  // ------------------------------------------------------------------ 5. leave setup mode
  $("exit-btn").addEventListener("click", () =>
    action("exit-result", null, async () => {
      const r = await api.post("/api/setup/exit", {});
      setSetupMode(r.setup_mode, "active");
      showResult("exit-result", "ok", [t("exit_done")]);
    }),
  );

  // Leaving the page while the control is off: ask first.
  window.addEventListener("beforeunload", (event) => {
    if (!setupMode) return undefined;
    event.preventDefault();
    event.returnValue = t("leave_warning");
    return t("leave_warning");
  });

  updateButtons();
  pollStatus();
})();
