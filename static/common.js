/* Shared helpers for the pages: UI texts, number/time formatting, JSON API calls.
   The texts come from i18n.py through the <script type="application/json" id="i18n"> block
   (the Content-Security-Policy allows no inline script, only files from /static). */
"use strict";

(function () {
  const texts = JSON.parse(document.getElementById("i18n").textContent);
  const locale = texts.locale || document.documentElement.lang || "de-DE";

  /** The text for key, with {name} placeholders filled from vars. */
  function t(key, vars) {
    let s = Object.prototype.hasOwnProperty.call(texts, key) ? texts[key] : key;
    if (vars) {
      s = s.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
    }
    return s;
  }

  const intFmt = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });
  const oneFmt = new Intl.NumberFormat(locale, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const twoFmt = new Intl.NumberFormat(locale, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const timeFmt = new Intl.DateTimeFormat(locale, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const hmFmt = new Intl.DateTimeFormat(locale, { hour: "2-digit", minute: "2-digit" });
  const dateTimeFmt = new Intl.DateTimeFormat(locale, {
    day: "2-digit", month: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  function isNum(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  const eurFmt = new Intl.NumberFormat(locale, { style: "currency", currency: "EUR" });

  const fmt = {
    /** An amount in euro ("1,23 €"). */
    eur(v) {
      return isNum(v) ? eurFmt.format(v) : t("none_value");
    },
    /** An amount with two decimals and no currency sign (chart axes). */
    money(v) {
      return isNum(v) ? twoFmt.format(v) : t("none_value");
    },
    int(v) {
      return isNum(v) ? intFmt.format(v) : t("none_value");
    },
    watts(v) {
      return isNum(v) ? intFmt.format(v) + "\u00a0" + t("unit_w") : t("none_value");
    },
    pct(v) {
      return isNum(v) ? intFmt.format(v) + "\u00a0" + t("unit_pct") : t("none_value");
    },
    /** Energy in Wh, shown as Wh below 1 kWh and as kWh above. */
    energy(wh) {
      if (!isNum(wh)) return t("none_value");
      if (Math.abs(wh) < 1000) return intFmt.format(wh) + "\u00a0" + t("unit_wh");
      const kwh = wh / 1000;
      return (Math.abs(kwh) < 10 ? twoFmt : oneFmt).format(kwh) + "\u00a0" + t("unit_kwh");
    },
    number(v) {
      if (!isNum(v)) return t("none_value");
      return Math.abs(v) >= 100 ? intFmt.format(v) : oneFmt.format(v);
    },
    /** An ISO 8601 string or epoch milliseconds as local time of day. */
    time(v) {
      if (v === null || v === undefined || v === "") return t("none_value");
      const d = new Date(v);
      return Number.isNaN(d.getTime()) ? String(v) : timeFmt.format(d);
    },
    hm(v) {
      const d = new Date(v);
      return Number.isNaN(d.getTime()) ? String(v) : hmFmt.format(d);
    },
    dateTime(v) {
      const d = new Date(v);
      return Number.isNaN(d.getTime()) ? String(v) : dateTimeFmt.format(d);
    },
  };

  /** An error from the JSON API: message from {"error": ...}, HTTP status (0: no connection). */
  class ApiError extends Error {
    /** ``data``: the answer's JSON body when there was one (e.g. a 400's ``problems``). */
    constructor(message, status, data) {
      super(message);
      this.status = status;
      this.data = data === undefined ? null : data;
    }
  }

  /** The text to show for an ApiError or any other failure. */
  function errorText(err) {
    if (err instanceof ApiError) {
      if (err.status === 0) return t("err_network");
      if (err.status === 401) return t("err_401");
      if (err.status === 403) return t("err_403") + " (" + err.message + ")";
      return t("err_prefix") + ": " + err.message;
    }
    return t("err_prefix") + ": " + String(err && err.message ? err.message : err);
  }

  async function request(method, path, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" };
    if (method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body || {});
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(e && e.message ? e.message : "network error", 0);
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const msg = data && typeof data.error === "string" ? data.error : "HTTP " + resp.status;
      throw new ApiError(msg, resp.status, data);
    }
    return data;
  }

  const api = {
    get: (path) => request("GET", path),
    post: (path, body) => request("POST", path, body),
  };

  /** Element by id. */
  function $(id) {
    return document.getElementById(id);
  }

  /** A new element with class and text (text is set as textContent, never as HTML). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    if (node && node.textContent !== text) node.textContent = text;
  }

  /** Replace a list's items with one <li> per text. */
  function fillList(listId, items) {
    const list = $(listId);
    list.replaceChildren(...items.map((s) => el("li", null, s)));
  }

  const body = document.body;
  const auth = {
    required: body.dataset.authRequired === "true",
    loggedIn: body.dataset.loggedIn === "true",
  };

  const logout = $("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try {
        await api.post("/logout", {});
      } finally {
        window.location.reload();
      }
    });
  }

  window.Marstek = { t, fmt, api, ApiError, errorText, $, el, setText, fillList, isNum, auth, locale };
})();
