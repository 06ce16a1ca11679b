// The operator console: plain JavaScript, no framework, no build step. Everything it shows comes
// from this service's API; everything it inserts is built as DOM nodes with textContent (the page
// never parses HTML from data). The admin token lives in sessionStorage and goes out only as a
// bearer token on admin calls; without one every action control is hidden.
"use strict";

(() => {
  const TOKEN_KEY = "orders.console.adminToken";
  /** Entries per page of every list (the API's pages, never a whole list). */
  const PAGE = 50;
  /** Most calls one "retry all matching" makes before it stops and says so. */
  const MAX_BULK_CALLS = 10000;
  const SVG = "http://www.w3.org/2000/svg";
  const VIEWS = ["overview", "workers", "orders", "order", "dead", "scheduled"];
  const TITLES = {
    overview: "Overview",
    workers: "Workers",
    orders: "Orders",
    order: "Order",
    dead: "Dead letters",
    scheduled: "Scheduled retries",
  };

  const $ = (id) => document.getElementById(id);
  const counts = new Intl.NumberFormat();
  const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const money = new Intl.NumberFormat(undefined, {
    minimumFractionDigits: 2,
    maximumFractionDigits: 2,
  });
  const exactTime = new Intl.DateTimeFormat(undefined, {
    dateStyle: "medium",
    timeStyle: "medium",
  });

  // --- DOM -------------------------------------------------------------------------------------

  /** An element with attributes and children; text always goes in as text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    for (const child of children) node.append(child);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  /** A table row saying why the table is empty. */
  function emptyRow(columns, text) {
    return el("tr", null, el("td", { class: "empty", colspan: columns, text }));
  }

  // --- formatting ------------------------------------------------------------------------------

  const dash = "–";
  const fmtCount = (n) => (typeof n === "number" ? counts.format(n) : dash);
  const fmtMoney = (n) => (typeof n === "number" ? money.format(n) : dash);

  function fmtMs(ms) {
    if (typeof ms !== "number") return dash;
    return ms < 10 ? oneDecimal.format(ms) : counts.format(Math.round(ms));
  }

  /** A duration in words: "812 ms", "2.3 s", "4 min 10 s", "3 h 2 min", "2 d 4 h". */
  function fmtDuration(ms) {
    if (typeof ms !== "number") return dash;
    const abs = Math.abs(ms);
    if (abs < 1000) return `${counts.format(Math.round(abs))} ms`;
    const s = abs / 1000;
    if (s < 60) return `${oneDecimal.format(s)} s`;
    const whole = Math.floor(s);
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${whole % 60} s`;
    if (whole < 86400) return `${Math.floor(whole / 3600)} h ${Math.floor((whole % 3600) / 60)} min`;
    return `${counts.format(Math.floor(whole / 86400))} d ${Math.floor((whole % 86400) / 3600)} h`;
  }

  /** "3 s ago", "in 5 min": whole units, the largest that fits. */
  function relative(iso) {
    const at = Date.parse(iso);
    if (Number.isNaN(at)) return dash;
    const diff = Date.now() - at;
    const s = Math.round(Math.abs(diff) / 1000);
    let text;
    if (s < 1) return "just now";
    if (s < 60) text = `${s} s`;
    else if (s < 3600) text = `${Math.floor(s / 60)} min`;
    else if (s < 86400) text = `${Math.floor(s / 3600)} h`;
    else text = `${counts.format(Math.floor(s / 86400))} d`;
    return diff >= 0 ? `${text} ago` : `in ${text}`;
  }

  /** A <time> that reads relative and shows the exact time on hover. */
  function timeNode(iso) {
    if (!iso) return document.createTextNode(dash);
    const at = new Date(iso);
    const title = Number.isNaN(at.getTime()) ? iso : `${exactTime.format(at)} (${iso})`;
    return el("time", { datetime: iso, title, "data-at": iso, text: relative(iso) });
  }

  /** Brings every relative time on the page up to date. */
  function tickTimes() {
    for (const node of document.querySelectorAll("time[data-at]")) {
      node.textContent = relative(node.getAttribute("data-at"));
    }
  }

  function fmtBytes(bytes) {
    if (typeof bytes !== "number") return dash;
    return `${oneDecimal.format(bytes / (1024 * 1024))} MiB`;
  }

  function statusBadge(status) {
    return el("span", { class: `badge status-${status}`, "data-status": status, text: status });
  }

  function errorList(errors) {
    const list = el("ul", { class: "errors" });
    for (const text of errors || []) list.append(el("li", { text }));
    if (!list.childElementCount) list.append(el("li", { class: "muted", text: "none" }));
    return list;
  }

  function orderLink(id) {
    if (!id) return el("span", { class: "muted", text: "(no order id)" });
    return el("a", { href: `#order/${encodeURIComponent(id)}` }, el("code", { text: id }));
  }

  // --- banners ---------------------------------------------------------------------------------

  let errorSource = null;
  let noticeTimer = null;

  /** Shows an error; `source` names the call, so that its next success clears it. */
  function showError(text, source) {
    $("error-text").textContent = text;
    $("error-banner").hidden = false;
    errorSource = source;
  }

  function clearError(source) {
    if (errorSource === source) {
      $("error-banner").hidden = true;
      errorSource = null;
    }
  }

  function notice(text) {
    const node = $("notice");
    node.textContent = text;
    node.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      node.hidden = true;
    }, 8000);
  }

  function describe(error, what) {
    const status = error.status ? ` (HTTP ${error.status} ${error.code})` : "";
    return `${what} failed: ${error.message}${status}`;
  }

  // --- the API ---------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  /** One call; JSON in and out. Admin calls carry the token, and a 401 or 403 drops it. */
  async function call(method, path, options = {}) {
    const headers = { Accept: "application/json" };
    if (options.admin) {
      const bearer = token();
      if (!bearer) throw new ApiFailure(0, "no_token", "this needs the admin token");
      headers.Authorization = `Bearer ${bearer}`;
    }
    let body;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
    } catch (e) {
      throw new ApiFailure(0, "network", `the service did not answer (${e.message})`);
    }
    const text = await response.text().catch(() => "");
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      const failure = new ApiFailure(
        response.status,
        error.code || `http_${response.status}`,
        error.message || response.statusText || "the request failed",
      );
      if (options.admin && (response.status === 401 || response.status === 403)) {
        dropToken(failure);
      }
      throw failure;
    }
    return data;
  }

  const query = (params) => {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") q.set(key, String(value));
    }
    return q.toString();
  };

  // --- auth ------------------------------------------------------------------------------------

  function applyAuth() {
    const admin = Boolean(token());
    document.body.classList.toggle("read-only", !admin);
    const state = $("auth-state");
    state.textContent = admin ? "admin" : "read-only";
    state.classList.toggle("admin", admin);
    state.title = admin
      ? "An admin token is kept for this tab (sessionStorage)"
      : "No admin token: the console only reads";
  }

  function dropToken(failure) {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage refused: nothing was kept either.
    }
    applyAuth();
    showError(
      `The admin token was refused (HTTP ${failure.status} ${failure.code}: ${failure.message}). ` +
        "It is forgotten: paste the right one to act again.",
      "auth",
    );
  }

  async function saveToken(event) {
    event.preventDefault();
    const input = $("token-input");
    const value = input.value.trim();
    input.value = "";
    if (!value) {
      notice("Paste the admin token first.");
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch {
      showError("This browser refused to keep the token (sessionStorage).", "auth");
      return;
    }
    applyAuth();
    try {
      // An admin read proves the token before the operator relies on it.
      await call("GET", `/dead-letters?${query({ limit: 1 })}`, { admin: true });
      clearError("auth");
      notice("Admin token accepted: actions are shown.");
    } catch (e) {
      if (e.status !== 401 && e.status !== 403) showError(describe(e, "Checking the token"), "auth");
    }
    route();
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // Nothing kept.
    }
    applyAuth();
    notice("Admin token forgotten: the console is read-only.");
    route();
  }

  // --- confirmation ----------------------------------------------------------------------------

  /** Asks in a modal dialog; resolves true when the operator confirms. */
  function confirmAction(text, okLabel) {
    const dialog = $("confirm-dialog");
    if (typeof dialog.showModal !== "function") return Promise.resolve(window.confirm(text));
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel || "Confirm";
    return new Promise((resolve) => {
      const finish = (answer) => {
        $("confirm-ok").removeEventListener("click", yes);
        $("confirm-cancel").removeEventListener("click", no);
        dialog.removeEventListener("cancel", escape);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const yes = () => finish(true);
      const no = () => finish(false);
      const escape = (event) => {
        event.preventDefault();
        finish(false);
      };
      $("confirm-ok").addEventListener("click", yes);
      $("confirm-cancel").addEventListener("click", no);
      dialog.addEventListener("cancel", escape);
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  /** Runs an action with its button disabled; a failure goes to the error banner. */
  async function act(button, what, action) {
    if (button) button.disabled = true;
    try {
      const result = await action();
      clearError("action");
      return result;
    } catch (e) {
      showError(describe(e, what), "action");
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  // --- overview --------------------------------------------------------------------------------

  let lastHistory = null;

  async function refreshStats() {
    let stats;
    try {
      stats = await call("GET", "/stats");
    } catch (e) {
      showError(describe(e, "Reading /stats"), "stats");
      return;
    }
    clearError("stats");
    renderClaiming(stats);
    for (const node of document.querySelectorAll("[data-stat]")) {
      const value = stats[node.getAttribute("data-stat")];
      node.textContent = fmtCount(value);
      node.setAttribute("data-value", String(value));
    }
    for (const node of document.querySelectorAll("[data-count]")) {
      const value = (stats.orders || {})[node.getAttribute("data-count")];
      node.textContent = fmtCount(value);
      node.setAttribute("data-value", String(value));
    }
    for (const node of document.querySelectorAll("[data-timing]")) {
      const [group, key] = node.getAttribute("data-timing").split(".");
      node.textContent = fmtMs((stats[group] || {})[key]);
    }
    $("timings-window").textContent =
      typeof stats.window === "number"
        ? `Over the last ${counts.format(stats.window)} completed orders.`
        : "";
    $("updated-at").replaceChildren(timeNode(new Date().toISOString()));
  }

  function renderClaiming(stats) {
    const paused = stats.claiming === "paused";
    $("paused-banner").hidden = !paused;
    const text = $("paused-text");
    text.replaceChildren("Claiming is paused");
    if (paused && stats.paused_at) text.append(" (since ", timeNode(stats.paused_at), ")");
    text.append(": workers take no new orders; new orders are still accepted and queue up.");
    $("pause-claiming").hidden = paused || stats.claiming === undefined;
  }

  async function refreshHistory() {
    let history;
    try {
      history = await call("GET", "/stats/history");
    } catch (e) {
      $("chart").replaceChildren(el("p", { class: "muted", text: `No history: ${e.message}` }));
      showError(describe(e, "Reading /stats/history"), "history");
      return;
    }
    clearError("history");
    lastHistory = history;
    drawChart(history);
  }

  /** A round upper bound for the y axis: 1, 2 or 5 times a power of ten. */
  function niceCeiling(value) {
    if (value <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function drawChart(history) {
    const box = $("chart");
    const completed = Array.isArray(history.completed) ? history.completed : [];
    const failed = Array.isArray(history.failed) ? history.failed : [];
    const n = Math.max(completed.length, failed.length);
    const width = Math.max(240, Math.floor(box.clientWidth || 600));
    const height = 180;
    const [left, right, top, bottom] = [40, 8, 8, 22];
    const sum = (values) => values.reduce((a, b) => a + b, 0);
    const peak = Math.max(0, ...completed, ...failed);
    const ceiling = niceCeiling(peak);
    const x = (i) => left + ((width - left - right) * (n <= 1 ? 0 : i)) / Math.max(1, n - 1);
    const y = (v) => top + (height - top - bottom) * (1 - v / ceiling);
    const summary =
      `Completed ${counts.format(sum(completed))} and failed ${counts.format(sum(failed))} ` +
      `in the last ${counts.format(n)} seconds; peak ${counts.format(peak)} per second.`;
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": summary,
    });
    chart.append(svg("title", null, summary));
    for (const v of [0, ceiling / 2, ceiling]) {
      chart.append(
        svg("line", { class: "gridline", x1: left, x2: width - right, y1: y(v), y2: y(v) }),
        svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, counts.format(v)),
      );
    }
    const seconds = Number(history.seconds) || n;
    const labels = [
      [0, `−${Math.round(seconds / 60)} min`, "start"],
      [(n - 1) / 2, `−${Math.round(seconds / 120)} min`, "middle"],
      [n - 1, "now", "end"],
    ];
    for (const [i, text, anchor] of labels) {
      chart.append(svg("text", { x: x(i), y: height - 6, "text-anchor": anchor }, text));
    }
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
    const line = (values) =>
      values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
    if (n) {
      chart.append(
        svg("path", { class: "line-completed", d: line(completed), "data-test": "line-completed" }),
        svg("path", { class: "line-failed", d: line(failed), "data-test": "line-failed" }),
      );
    }
    const legend = el(
      "p",
      { class: "legend" },
      el(
        "span",
        null,
        el("span", { class: "swatch completed" }),
        "Completed: ",
        el("strong", { "data-test": "history-completed", text: counts.format(sum(completed)) }),
      ),
      el(
        "span",
        null,
        el("span", { class: "swatch failed" }),
        "Failed: ",
        el("strong", { "data-test": "history-failed", text: counts.format(sum(failed)) }),
      ),
      el("span", { class: "muted", text: `peak ${counts.format(peak)}/s` }),
    );
    box.replaceChildren(chart, legend);
  }

  // --- workers ---------------------------------------------------------------------------------

  async function refreshWorkers() {
    const body = $("workers-body");
    let data;
    try {
      data = await call("GET", "/workers");
    } catch (e) {
      showError(describe(e, "Reading /workers"), "workers");
      if (!body.childElementCount) body.replaceChildren(emptyRow(11, e.message));
      return;
    }
    clearError("workers");
    $("workers-lease").textContent =
      `A worker is stuck when its heartbeat is older than the lease (${fmtDuration(data.lease_ms)}): ` +
      "it is not renewing and will be reaped, its orders put back on the queue.";
    const workers = data.workers || [];
    body.replaceChildren(
      ...workers.map((w) =>
        el(
          "tr",
          { class: w.stuck ? "stuck" : null, "data-worker": w.id },
          el("td", null, el("code", { text: w.id })),
          el("td", { text: w.host }),
          el("td", { class: "num", text: w.pid }),
          el("td", null, timeNode(w.started_at)),
          el("td", {
            text: typeof w.heartbeat_age_ms === "number" ? `${fmtDuration(w.heartbeat_age_ms)} ago` : "expired",
          }),
          el("td", { class: "num", "data-test": "held", text: fmtCount(w.held) }),
          el("td", { text: fmtDuration(w.oldest_held_age_ms) }),
          el(
            "td",
            null,
            w.stuck
              ? el("span", { class: "badge bad", "data-test": "stuck", text: "stuck" })
              : el("span", { class: "badge status-completed", text: "live" }),
          ),
          el("td", { class: "num", text: fmtBytes(w.rss_bytes) }),
          el("td", {
            class: "num",
            text: typeof w.cpu_seconds === "number" ? `${oneDecimal.format(w.cpu_seconds)} s` : dash,
          }),
          el("td", { class: "num", text: fmtCount(w.open_fds) }),
        ),
      ),
    );
    if (!workers.length) body.append(emptyRow(11, "No live worker processes."));
  }

  // --- a paged list (orders, dead letters, scheduled retries) ----------------------------------

  /** Where a list is: its filter, the cursor of the page shown, the next page's cursor. */
  function pager(prefix, load) {
    const state = { cursor: null, next: null, loaded: false };
    $(`${prefix}-next`).addEventListener("click", () => {
      if (!state.next) return;
      state.cursor = state.next;
      load();
    });
    $(`${prefix}-first`).addEventListener("click", () => {
      state.cursor = null;
      load();
    });
    state.show = (next, shown) => {
      state.next = next || null;
      state.loaded = true;
      $(`${prefix}-next`).hidden = !state.next;
      $(`${prefix}-first`).hidden = !state.cursor;
      $(`${prefix}-count`).textContent =
        `${counts.format(shown)} on this page${state.cursor ? " (not the first)" : ""}` +
        `${state.next ? ", more on the next" : ""}.`;
    };
    return state;
  }

  // --- orders ----------------------------------------------------------------------------------

  const orders = pager("orders", () => loadOrders());
  orders.status = "";
  orders.customer = "";

  async function loadOrders() {
    let data;
    try {
      data = await call(
        "GET",
        `/orders?${query({ limit: PAGE, status: orders.status, customer_id: orders.customer, cursor: orders.cursor })}`,
      );
    } catch (e) {
      showError(describe(e, "Listing orders"), "orders");
      return;
    }
    clearError("orders");
    const list = data.orders || [];
    $("orders-body").replaceChildren(
      ...list.map((o) =>
        el(
          "tr",
          { "data-order": o.order_id },
          el("td", null, orderLink(o.order_id)),
          el("td", { text: o.customer_id }),
          el("td", null, statusBadge(o.status)),
          el("td", { class: "num", text: fmtMoney(o.total) }),
          el("td", { class: "num", text: fmtCount(o.attempts) }),
          el("td", null, timeNode(o.accepted_at)),
          el("td", null, timeNode(o.updated_at)),
        ),
      ),
    );
    if (!list.length) $("orders-body").append(emptyRow(7, "No orders match."));
    orders.show(data.next_cursor, list.length);
  }

  // --- one order -------------------------------------------------------------------------------

  let shownOrder = null;

  async function loadOrder(id) {
    $("order-id").textContent = id;
    let history;
    try {
      history = await call("GET", `/orders/${encodeURIComponent(id)}/history`);
    } catch (e) {
      if (e.status === 404) {
        shownOrder = null;
        $("order-detail").hidden = true;
        $("order-missing").hidden = false;
        $("order-missing").textContent = `No order ${id}: ${e.message}.`;
        clearError("order");
      } else {
        showError(describe(e, "Reading the order"), "order");
      }
      return;
    }
    clearError("order");
    shownOrder = history;
    renderOrder(history);
  }

  function renderOrder(history) {
    const o = history.order || {};
    $("order-missing").hidden = true;
    $("order-detail").hidden = false;
    const fields = [
      ["status", "Status", statusBadge(o.status)],
      ["customer", "Customer", o.customer_id],
      ["total", "Total", fmtMoney(o.total)],
      ["items", "Items", (o.items || []).join(", ")],
      ["attempts", "Attempts", fmtCount(o.attempts)],
      ["accepted", "Accepted", timeNode(o.accepted_at)],
      ["processing", "Processing since", timeNode(o.processing_started_at)],
      ["completed", "Completed", timeNode(o.completed_at)],
      ["updated", "Updated", timeNode(o.updated_at)],
      ["request-id", "Request id", history.request_id ? el("code", { text: history.request_id }) : dash],
      [
        "notification",
        "Notification",
        history.notification
          ? el("span", null, "sent ", timeNode(history.notification.sent_at))
          : "not sent",
      ],
      ["dead-letter", "Dead letter", history.dead_letter ? "yes" : "no"],
      ["retry-due", "Retry due", timeNode(history.retry_due_at)],
      ["last-error", "Last error", o.last_error || dash],
    ];
    $("order-fields").replaceChildren(
      ...fields.flatMap(([key, label, value]) => [
        el("dt", { text: label }),
        el("dd", { "data-field": key }, value),
      ]),
    );
    const timeline = history.timeline || [];
    $("order-timeline").replaceChildren(
      ...timeline.map((t) =>
        el(
          "li",
          { class: `ev-${t.event}`, "data-event": t.event },
          el("span", { class: "event", text: t.event.replace("_", " ") }),
          timeNode(t.at),
        ),
      ),
    );
    if (!timeline.length) $("order-timeline").append(el("li", { class: "muted", text: "no events" }));
    const errors = history.errors || [];
    $("order-errors").replaceChildren(...errors.map((text) => el("li", { text })));
    if (!errors.length) $("order-errors").append(el("li", { class: "muted", text: "none" }));
    $("order-cancel").hidden = !(o.status === "queued" || o.status === "processing");
    $("order-retry-dead").hidden = !history.dead_letter;
    $("order-retry-now").hidden = !history.retry_due_at || Boolean(history.dead_letter);
  }

  async function cancelOrder(event) {
    if (!shownOrder) return;
    const id = shownOrder.order.order_id;
    const sure = await confirmAction(
      `Cancel order ${id}? A cancelled order is final: it is not processed and cannot be resumed.`,
      "Cancel the order",
    );
    if (!sure) return;
    await act(event.currentTarget, "Cancelling the order", async () => {
      await call("PUT", `/orders/${encodeURIComponent(id)}/status`, { body: { status: "cancelled" } });
      notice(`Order ${id} cancelled.`);
    });
    loadOrder(id);
  }

  async function retryOrderDeadLetter(event) {
    if (!shownOrder) return;
    const id = shownOrder.order.order_id;
    await act(event.currentTarget, "Retrying the dead letter", async () => {
      await call("POST", `/dead-letters/${encodeURIComponent(id)}/retry`, { admin: true });
      notice(`Order ${id} is queued again.`);
    });
    loadOrder(id);
  }

  async function retryOrderNow(event) {
    if (!shownOrder) return;
    const id = shownOrder.order.order_id;
    await act(event.currentTarget, "Retrying now", async () => {
      await call("POST", `/scheduled/${encodeURIComponent(id)}/retry`, { admin: true });
      notice(`Order ${id} is queued now.`);
    });
    loadOrder(id);
  }

  // --- dead letters ----------------------------------------------------------------------------

  const dead = pager("dead", () => loadDead());
  dead.customer = "";
  dead.error = "";
  dead.selected = new Set();
  dead.total = 0;

  const deadFilter = () => {
    const filter = {};
    if (dead.customer) filter.customer_id = dead.customer;
    if (dead.error) filter.error = dead.error;
    return filter;
  };

  function updateSelection() {
    const button = $("dead-retry-selected");
    button.disabled = dead.selected.size === 0;
    button.textContent = dead.selected.size ? `Retry selected (${dead.selected.size})` : "Retry selected";
    const boxes = [...document.querySelectorAll("#dead-body input[type=checkbox]")];
    $("dead-select-all").checked = boxes.length > 0 && boxes.every((b) => b.checked);
  }

  async function loadDead() {
    if (!token()) {
      $("dead-body").replaceChildren();
      $("dead-total").textContent = "";
      return;
    }
    let data;
    try {
      data = await call(
        "GET",
        `/dead-letters?${query({ limit: PAGE, customer_id: dead.customer, error: dead.error, cursor: dead.cursor })}`,
        { admin: true },
      );
    } catch (e) {
      showError(describe(e, "Listing dead letters"), "dead");
      if (!$("dead-body").childElementCount) $("dead-body").append(emptyRow(7, e.message));
      return;
    }
    clearError("dead");
    const entries = data.dead_letters || [];
    dead.total = typeof data.total === "number" ? data.total : entries.length;
    $("dead-total").textContent = `${counts.format(dead.total)} in all`;
    const onPage = new Set(entries.map((d) => d.id));
    for (const id of [...dead.selected]) if (!onPage.has(id)) dead.selected.delete(id);
    $("dead-body").replaceChildren(
      ...entries.map((d) => {
        const box = el("input", {
          type: "checkbox",
          "aria-label": `Select dead letter ${d.order_id || d.id}`,
          "data-id": d.id,
          onchange: (event) => {
            if (event.currentTarget.checked) dead.selected.add(d.id);
            else dead.selected.delete(d.id);
            updateSelection();
          },
        });
        box.checked = dead.selected.has(d.id);
        return el(
          "tr",
          { "data-dead": d.id, "data-order": d.order_id || "" },
          el("td", null, box),
          el("td", null, orderLink(d.order_id)),
          el("td", { text: d.customer_id || dash }),
          el("td", { class: "num", text: fmtMoney(d.total) }),
          el("td", null, timeNode(d.failed_at)),
          el("td", { class: "wrap" }, errorList(d.errors)),
          el(
            "td",
            null,
            el(
              "div",
              { class: "actions" },
              el("button", {
                type: "button",
                "data-action": "retry-dead",
                "data-test": "dead-retry",
                text: "Retry",
                onclick: (event) => retryDead(event.currentTarget, d),
              }),
              el("button", {
                type: "button",
                class: "danger",
                "data-action": "delete-dead",
                "data-test": "dead-delete",
                text: "Delete",
                onclick: (event) => deleteDead(event.currentTarget, d),
              }),
            ),
          ),
        );
      }),
    );
    if (!entries.length) {
      const filtered = dead.customer || dead.error;
      const more = data.next_cursor ? " on this page; the next page may hold some" : "";
      $("dead-body").append(emptyRow(7, filtered ? `None match the filter${more}.` : `No dead letters${more}.`));
    }
    dead.show(data.next_cursor, entries.length);
    updateSelection();
  }

  async function afterDeadChange() {
    await Promise.all([loadDead(), refreshStats()]);
  }

  async function retryDead(button, entry) {
    await act(button, "Retrying the dead letter", async () => {
      const answer = await call("POST", `/dead-letters/${encodeURIComponent(entry.id)}/retry`, { admin: true });
      notice(`Order ${(answer && answer.order_id) || entry.order_id || entry.id} is queued again.`);
    });
    await afterDeadChange();
  }

  async function deleteDead(button, entry) {
    const sure = await confirmAction(
      `Delete the dead letter of ${entry.order_id ? `order ${entry.order_id}` : `entry ${entry.id}`}? ` +
        "It cannot be retried afterwards; the order stays failed.",
      "Delete",
    );
    if (!sure) return;
    await act(button, "Deleting the dead letter", async () => {
      await call("DELETE", `/dead-letters/${encodeURIComponent(entry.id)}`, { admin: true });
      notice("Dead letter deleted.");
    });
    await afterDeadChange();
  }

  async function retrySelected(event) {
    const ids = [...dead.selected];
    if (!ids.length) return;
    const sure = await confirmAction(`Retry the ${counts.format(ids.length)} selected dead letters?`, "Retry");
    if (!sure) return;
    await act(event.currentTarget, "Retrying the selected dead letters", async () => {
      const answer = await call("POST", "/dead-letters/retry", { admin: true, body: { ids } });
      dead.selected.clear();
      notice(`Retried ${fmtCount(answer.retried)}, skipped ${fmtCount(answer.skipped)}.`);
    });
    await afterDeadChange();
  }

  async function retryMatching(event) {
    const filter = deadFilter();
    const described = Object.keys(filter).length
      ? `every dead letter matching ${Object.entries(filter).map(([k, v]) => `${k} "${v}"`).join(" and ")}`
      : `all ${counts.format(dead.total)} dead letters`;
    const sure = await confirmAction(`Retry ${described}?`, "Retry all");
    if (!sure) return;
    await act(event.currentTarget, "Retrying the matching dead letters", async () => {
      let cursor = null;
      let retried = 0;
      let skipped = 0;
      for (let calls = 0; calls < MAX_BULK_CALLS; calls++) {
        const body = { filter };
        if (cursor) body.cursor = cursor;
        const answer = await call("POST", "/dead-letters/retry", { admin: true, body });
        retried += answer.retried || 0;
        skipped += answer.skipped || 0;
        cursor = answer.next_cursor;
        notice(`Retrying: ${counts.format(retried)} retried, ${counts.format(skipped)} skipped so far…`);
        if (!cursor) {
          notice(`Retried ${counts.format(retried)}, skipped ${counts.format(skipped)}.`);
          return;
        }
      }
      notice(`Stopped after ${counts.format(MAX_BULK_CALLS)} calls: ${counts.format(retried)} retried; run it again.`);
    });
    dead.cursor = null;
    await afterDeadChange();
  }

  async function purgeDead(event) {
    const sure = await confirmAction(
      `Purge all ${counts.format(dead.total)} dead letters? They are gone for good; their orders stay failed.`,
      "Purge all",
    );
    if (!sure) return;
    await act(event.currentTarget, "Purging the dead letters", async () => {
      const answer = await call("DELETE", "/dead-letters", { admin: true });
      notice(`Purged ${fmtCount(answer && answer.purged)} dead letters.`);
    });
    dead.cursor = null;
    await afterDeadChange();
  }

  // --- scheduled retries -----------------------------------------------------------------------

  const scheduled = pager("scheduled", () => loadScheduled());

  async function loadScheduled() {
    if (!token()) {
      $("scheduled-body").replaceChildren();
      $("scheduled-total").textContent = "";
      return;
    }
    let data;
    try {
      data = await call("GET", `/scheduled?${query({ limit: PAGE, cursor: scheduled.cursor })}`, { admin: true });
    } catch (e) {
      showError(describe(e, "Listing scheduled retries"), "scheduled");
      if (!$("scheduled-body").childElementCount) $("scheduled-body").append(emptyRow(7, e.message));
      return;
    }
    clearError("scheduled");
    const entries = data.scheduled || [];
    $("scheduled-total").textContent =
      typeof data.total === "number" ? `${counts.format(data.total)} in all` : "";
    $("scheduled-body").replaceChildren(
      ...entries.map((s) =>
        el(
          "tr",
          { "data-order": s.order_id },
          el("td", null, orderLink(s.order_id)),
          el("td", { text: s.customer_id || dash }),
          el("td", { class: "num", text: fmtMoney(s.total) }),
          el("td", null, timeNode(s.due_at)),
          el("td", { class: "num", text: fmtCount(s.failures) }),
          el("td", { class: "wrap" }, errorList(s.errors)),
          el(
            "td",
            null,
            el("button", {
              type: "button",
              "data-action": "retry-scheduled",
              "data-test": "scheduled-retry",
              text: "Retry now",
              onclick: (event) => retryScheduled(event.currentTarget, s),
            }),
          ),
        ),
      ),
    );
    if (!entries.length) $("scheduled-body").append(emptyRow(7, "No retries are scheduled."));
    scheduled.show(data.next_cursor, entries.length);
  }

  async function retryScheduled(button, entry) {
    await act(button, "Retrying now", async () => {
      await call("POST", `/scheduled/${encodeURIComponent(entry.order_id)}/retry`, { admin: true });
      notice(`Order ${entry.order_id} is queued now.`);
    });
    await Promise.all([loadScheduled(), refreshStats()]);
  }

  // --- pause and resume ------------------------------------------------------------------------

  async function pauseClaiming(event) {
    const sure = await confirmAction(
      "Pause claiming? Every worker process stops taking new orders within about a second; " +
        "orders are still accepted and queue up, and orders in flight finish.",
      "Pause",
    );
    if (!sure) return;
    await act(event.currentTarget, "Pausing", async () => {
      await call("POST", "/workers/pause", { admin: true });
      notice("Claiming paused.");
    });
    await refreshStats();
  }

  async function resumeClaiming(event) {
    await act(event.currentTarget, "Resuming", async () => {
      await call("POST", "/workers/resume", { admin: true });
      notice("Claiming resumed.");
    });
    await refreshStats();
  }

  // --- views and refresh -----------------------------------------------------------------------

  let view = { name: "overview", arg: "" };

  function parseHash() {
    let hash = location.hash.replace(/^#/, "");
    try {
      hash = decodeURIComponent(hash);
    } catch {
      // A malformed escape: read it as written.
    }
    if (hash.startsWith("order/") && hash.length > 6) return { name: "order", arg: hash.slice(6).trim() };
    return VIEWS.includes(hash) && hash !== "order" ? { name: hash, arg: "" } : { name: "overview", arg: "" };
  }

  /** What the current view shows, read again. */
  function loadView() {
    switch (view.name) {
      case "overview":
        return refreshHistory();
      case "workers":
        return refreshWorkers();
      case "orders":
        return orders.loaded ? loadOrders() : Promise.resolve();
      case "order":
        return loadOrder(view.arg);
      case "dead":
        return loadDead();
      case "scheduled":
        return loadScheduled();
      default:
        return Promise.resolve();
    }
  }

  function route() {
    view = parseHash();
    // The last view's failures are not this one's; the service's and the token's stay.
    if (errorSource && errorSource !== "stats" && errorSource !== "auth") {
      $("error-banner").hidden = true;
      errorSource = null;
    }
    for (const section of document.querySelectorAll("main > section[data-view]")) {
      section.hidden = section.getAttribute("data-view") !== view.name;
    }
    const current = view.name === "order" ? "orders" : view.name;
    for (const link of document.querySelectorAll("nav a[data-nav]")) {
      if (link.getAttribute("data-nav") === current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${TITLES[view.name]} · orders console`;
    if (view.name === "orders" && !orders.loaded) loadOrders();
    refreshNow();
  }

  let timer = null;
  let busy = false;

  async function refreshNow() {
    clearTimeout(timer);
    timer = null;
    if (!busy) {
      busy = true;
      try {
        await Promise.all([refreshStats(), loadView()]);
      } finally {
        busy = false;
      }
    }
    schedule();
  }

  /** The next refresh, unless refreshing is paused or the tab is hidden. */
  function schedule() {
    clearTimeout(timer);
    timer = null;
    const seconds = Number($("refresh").value);
    if (seconds > 0 && !document.hidden) timer = setTimeout(refreshNow, seconds * 1000);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(timer);
      timer = null;
    } else {
      refreshNow();
    }
  });

  function start() {
    applyAuth();
    $("token-form").addEventListener("submit", saveToken);
    $("token-forget").addEventListener("click", forgetToken);
    $("refresh").addEventListener("change", schedule);
    $("refresh-now").addEventListener("click", refreshNow);
    $("error-dismiss").addEventListener("click", () => {
      $("error-banner").hidden = true;
      errorSource = null;
    });
    $("pause-claiming").addEventListener("click", pauseClaiming);
    $("resume-claiming").addEventListener("click", resumeClaiming);
    $("lookup-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = $("lookup-id").value.trim();
      if (id) location.hash = `#order/${encodeURIComponent(id)}`;
    });
    $("list-form").addEventListener("submit", (event) => {
      event.preventDefault();
      orders.status = $("list-status").value;
      orders.customer = $("list-customer").value.trim();
      orders.cursor = null;
      loadOrders();
    });
    $("order-cancel").addEventListener("click", cancelOrder);
    $("order-retry-dead").addEventListener("click", retryOrderDeadLetter);
    $("order-retry-now").addEventListener("click", retryOrderNow);
    $("dead-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      dead.customer = $("dead-customer").value.trim();
      dead.error = $("dead-error").value.trim();
      dead.cursor = null;
      dead.selected.clear();
      loadDead();
    });
    $("dead-select-all").addEventListener("change", (event) => {
      const on = event.currentTarget.checked;
      for (const box of document.querySelectorAll("#dead-body input[type=checkbox]")) {
        box.checked = on;
        const id = box.getAttribute("data-id");
        if (on) dead.selected.add(id);
        else dead.selected.delete(id);
      }
      updateSelection();
    });
    $("dead-retry-selected").addEventListener("click", retrySelected);
    $("dead-retry-matching").addEventListener("click", retryMatching);
    $("dead-purge").addEventListener("click", purgeDead);
    window.addEventListener("hashchange", route);
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => lastHistory && view.name === "overview" && drawChart(lastHistory), 150);
    });
    setInterval(() => document.hidden || tickTimes(), 1000);
    route();
  }

  start();
})();
