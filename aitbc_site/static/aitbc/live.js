/* Live updates for every dashboard page, over the /ws/events/ websocket.
 *
 * - window.aitbc.on(types, fn): call fn(event) for events of the given types ("*" for all).
 * - An element with data-live-on="block jobs" and data-live-src="URL" has its content
 *   replaced by a fresh server-rendered fragment from URL when such an event arrives
 *   (at most one request in flight per element; events during it cause one more).
 * - data-live-every="S" also refreshes it every S seconds.
 * - The nav shows the connection state and the chain height.
 * The socket reconnects with backoff when it drops.
 */
(function () {
  "use strict";
  var handlers = [];
  var statusEl = document.getElementById("live-status");
  var heightEl = document.getElementById("live-height");
  var socket = null;
  var retry = 500;

  function setState(state) {
    if (statusEl) statusEl.setAttribute("data-state", state);
    document.body.setAttribute("data-live", state);
  }

  function on(types, fn) {
    var list = typeof types === "string" ? types.split(/\s+/) : types;
    handlers.push({ types: list, fn: fn });
  }

  function emit(event) {
    handlers.forEach(function (h) {
      if (h.types.indexOf("*") >= 0 || h.types.indexOf(event.type) >= 0) {
        try { h.fn(event); } catch (err) { console.warn("live handler failed", err); }
      }
    });
  }

  function refresh(el) {
    if (el._liveBusy) { el._livePending = true; return; }
    el._liveBusy = true;
    fetch(el.getAttribute("data-live-src"), { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        el.innerHTML = html;
        el.dispatchEvent(new CustomEvent("live:refreshed", { bubbles: true }));
      })
      .catch(function (err) { console.warn("live refresh of " + el.id + " failed: " + err); })
      .then(function () {
        el._liveBusy = false;
        if (el._livePending) { el._livePending = false; setTimeout(function () { refresh(el); }, 250); }
      });
  }

  on("*", function (event) {
    document.querySelectorAll("[data-live-on]").forEach(function (el) {
      if (el.getAttribute("data-live-on").split(/\s+/).indexOf(event.type) >= 0) refresh(el);
    });
  });
  on("block", function (event) {
    if (heightEl && typeof event.height === "number") heightEl.textContent = "#" + event.height;
  });

  // Parts that change without an event (providers coming and going) also refresh on a timer.
  document.querySelectorAll("[data-live-every]").forEach(function (el) {
    var seconds = parseFloat(el.getAttribute("data-live-every"));
    if (seconds > 0) setInterval(function () { refresh(el); }, seconds * 1000);
  });

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws/events/");
    setState("connecting");
    socket.onopen = function () { retry = 500; setState("open"); };
    socket.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (err) { return; }
      emit(event);
    };
    socket.onclose = function () {
      setState("closed");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }

  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  window.aitbc = { on: on, refresh: refresh, csrfToken: csrfToken };
  if (heightEl && heightEl.dataset.height) heightEl.textContent = "#" + heightEl.dataset.height;
  connect();
})();
