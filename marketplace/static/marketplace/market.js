/* The marketplace page: submit a prompt through POST /v1/jobs and watch its answer stream in
 * over the live websocket ("job.chunk" events, then "job" state events); open and close
 * deposits through /v1/deposits. The job page streams the answer of a running job too.
 */
(function () {
  "use strict";
  if (!window.aitbc) return;
  var chunks = {};        // job id -> {index: text}, kept from before the submit's answer names the job
  var watching = null;    // the job whose answer this page shows
  var stream = document.getElementById("job-stream");
  var statusEl = document.getElementById("job-status");
  var resultEl = document.getElementById("job-result");
  var DONE = ["completed", "settled", "refunded", "failed", "expired", "cancelled", "unfunded"];

  function render() {
    if (!watching || !stream) return;
    var parts = chunks[watching] || {};
    var indexes = Object.keys(parts).map(Number).sort(function (a, b) { return a - b; });
    stream.textContent = indexes.map(function (i) { return parts[i]; }).join("");
  }

  window.aitbc.on("job.chunk", function (event) {
    (chunks[event.job_id] = chunks[event.job_id] || {})[event.index] = event.text;
    if (event.job_id === watching) render();
  });

  window.aitbc.on("job", function (event) {
    if (event.job_id !== watching) return;
    var stateText = document.getElementById("job-state-text");
    if (stateText) stateText.textContent = " " + event.state + (event.reason ? " — " + event.reason : "");
    if (DONE.indexOf(event.state) >= 0) showResult(watching);
  });

  function showResult(jobId) {
    if (!resultEl) return;
    fetch("/market/jobs/" + encodeURIComponent(jobId) + "?fragment=job", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        resultEl.innerHTML = html;
        var output = resultEl.querySelector("#job-output");
        // Chunks may have been missed while the socket reconnected: the stored output is whole.
        if (output && stream && output.textContent.length > stream.textContent.length) stream.textContent = output.textContent;
      })
      .catch(function (err) { console.warn("job result: " + err); });
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": window.aitbc.csrfToken() },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (data) { return { ok: r.ok, status: r.status, data: data }; });
    });
  }

  var form = document.getElementById("job-form");
  if (form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var f = new FormData(form);
      var payment = String(f.get("payment") || "");
      var body = {
        model: f.get("model"),
        prompt: f.get("prompt"),
        max_tokens: parseInt(f.get("max_tokens"), 10),
        max_price: parseInt(f.get("max_price"), 10)
      };
      if (payment.indexOf("wallet:") === 0) body.payment = { wallet: payment.slice(7), password: f.get("password") };
      else if (payment.indexOf("deposit:") === 0) body.payment = { deposit: payment.slice(8) };
      else { statusEl.textContent = "Create a wallet or open a deposit first."; return; }
      stream.textContent = "";
      resultEl.innerHTML = "";
      watching = null;
      statusEl.textContent = "submitting…";
      post("/v1/jobs", body).then(function (answer) {
        if (!answer.ok) {
          var error = answer.data && answer.data.error;
          statusEl.textContent = "refused: " + (error ? error.code + " — " + error.message : answer.status);
          return;
        }
        watching = answer.data.id;
        statusEl.innerHTML = "";
        var link = document.createElement("a");
        link.href = "/market/jobs/" + encodeURIComponent(watching);
        link.textContent = watching;
        link.id = "job-link";
        statusEl.appendChild(link);
        var stateText = document.createElement("span");
        stateText.id = "job-state-text";
        stateText.textContent = " " + answer.data.state;
        statusEl.appendChild(stateText);
        render();
        if (DONE.indexOf(answer.data.state) >= 0) showResult(watching);
      }).catch(function (err) { statusEl.textContent = "could not submit: " + err; });
    });
  }

  var depositForm = document.getElementById("deposit-form");
  if (depositForm) {
    depositForm.addEventListener("submit", function (e) {
      e.preventDefault();
      var f = new FormData(depositForm);
      var note = document.getElementById("deposit-status");
      note.textContent = "opening…";
      post("/v1/deposits", { wallet: f.get("wallet"), password: f.get("password"), amount: parseInt(f.get("amount"), 10) })
        .then(function (answer) {
          var error = answer.data && answer.data.error;
          note.textContent = answer.ok ? "deposit " + answer.data.id + " " + answer.data.state : "refused: " + (error ? error.code + " — " + error.message : answer.status);
          var list = document.getElementById("market-deposits");
          if (list) window.aitbc.refresh(list);
        });
    });
  }

  document.addEventListener("click", function (e) {
    var id = e.target && e.target.getAttribute && e.target.getAttribute("data-close-deposit");
    if (!id) return;
    post("/v1/deposits/" + encodeURIComponent(id) + "/close", {}).then(function () {
      var list = document.getElementById("market-deposits");
      if (list) window.aitbc.refresh(list);
    });
  });

  // The job page: stream the answer of this job while it runs.
  var live = document.getElementById("job-live");
  if (live) {
    watching = live.getAttribute("data-job-id");
    window.aitbc.on("job.chunk", function () { render(); });
  }
})();
