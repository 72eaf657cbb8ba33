// Dashboard live updates over /dashboard/live (handlers/live.py). The server pushes
// module and run events; this file only finds the marked elements and updates them.
// No polling: when the socket drops it reconnects with a growing delay.
(function () {
  "use strict";

  var body = document.body;
  var path = body && body.getAttribute("data-live");
  if (!path || !("WebSocket" in window)) {
    return;
  }
  var stateEl = document.getElementById("live-state");
  var delay = 1000;
  var everOpened = false;

  function setState(state) {
    if (!stateEl) return;
    stateEl.setAttribute("data-state", state);
    var text = stateEl.querySelector(".live-text");
    if (text && text.getAttribute("data-" + state)) {
      text.textContent = text.getAttribute("data-" + state);
    }
  }

  function each(selector, fn, root) {
    Array.prototype.forEach.call((root || document).querySelectorAll(selector), fn);
  }

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  function badge(status) {
    var span = document.createElement("span");
    span.className = "badge badge--" + status.tone;
    span.setAttribute("data-status", status.key);
    span.textContent = status.label;
    return span;
  }

  function setBadge(cell, status) {
    if (!cell) return;
    var current = cell.querySelector(".badge");
    if (current && current.getAttribute("data-status") === status.key) return;
    cell.replaceChildren(badge(status));
    flash(cell);
  }

  function setText(cell, text, empty) {
    if (!cell) return;
    var value = text || (empty === undefined ? "—" : empty);
    if (cell.textContent.trim() === value) return;
    cell.textContent = value;
    flash(cell);
  }

  function cell(text) {
    var td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text || "—";
    return td;
  }

  // A <time> element like the server renders (static/js/time.js may localise it).
  function timeEl(iso, text) {
    if (!iso) return document.createTextNode(text || "—");
    var t = document.createElement("time");
    t.setAttribute("datetime", iso);
    t.textContent = text;
    return t;
  }

  function setTime(cell, iso, text) {
    if (!cell) return;
    var current = cell.querySelector("time");
    if (current && current.getAttribute("datetime") === iso) return;
    cell.replaceChildren(timeEl(iso, text));
    localise(cell);
    flash(cell);
  }

  function localise(root) {
    if (window.tschedTime) window.tschedTime.apply(root);
  }

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  // -- modules ----------------------------------------------------------------------
  function onModule(msg) {
    var id = String(msg.module_id);
    var found = document.querySelectorAll('[data-module="' + id + '"]');
    each('[data-module="' + id + '"]', function (row) {
      setBadge(row.querySelector(".js-status"), msg.status);
      var since = row.querySelector(".js-since");
      if (since) {
        since.replaceChildren(msg.since_label + " ", timeEl(msg.since_iso, msg.since));
        localise(since);
        flash(since);
      }
      if (msg.online) {
        setText(row.querySelector(".js-connected"), msg.connected_at);
        setText(row.querySelector(".js-heartbeat"), msg.last_heartbeat);
        setText(row.querySelector(".js-address"), msg.remote_address);
      }
    });
    var table = document.querySelector("[data-modules-table] tbody");
    if (table && found.length === 0) {
      // A module registered after this page was rendered.
      var empty = table.querySelector(".empty");
      if (empty) empty.remove();
      var tr = document.createElement("tr");
      tr.setAttribute("data-module", id);
      var status = cell(badge(msg.status));
      status.className = "js-status";
      var since = cell(""); since.className = "js-since";
      since.replaceChildren(msg.since_label + " ", timeEl(msg.since_iso, msg.since));
      var address = cell(msg.remote_address); address.className = "js-address";
      tr.append(cell(id), cell(link("/modules/" + id, msg.name)), status, since, cell("—"),
        address, cell(""), cell(""));
      localise(tr);
      table.appendChild(tr);
      flash(tr);
    }
    var summary = document.querySelector("[data-module-ids]");
    if (summary) {
      var ids = summary.getAttribute("data-module-ids").split(",").filter(Boolean);
      if (ids.indexOf(id) < 0) {
        ids.push(id);
        summary.setAttribute("data-module-ids", ids.join(","));
      }
      setText(summary.querySelector('[data-count="online"]'), String(msg.online_count));
      setText(summary.querySelector('[data-count="offline"]'), String(Math.max(0, ids.length - msg.online_count)));
    }
  }

  // -- runs -------------------------------------------------------------------------
  function runRow(run) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-run", run.run_id);
    var name = document.createElement("span");
    name.append(link(run.url, run.workflow_name), " ");
    var id = document.createElement("span");
    id.className = "muted";
    id.textContent = "#" + run.workflow_id;
    name.appendChild(id);
    var status = cell(badge(run.status)); status.className = "js-status";
    var duration = cell(run.duration); duration.className = "js-duration";
    tr.append(cell(name), status, cell(run.trigger), cell(timeEl(run.started_iso, run.started_at)), duration,
      cell(timeEl(run.nominal_iso, run.nominal)));
    localise(tr);
    return tr;
  }

  // Keep a live table to its server-rendered size: the oldest rows go.
  function trim(tbody, limit) {
    var rows = tbody.querySelectorAll("tr[data-run]");
    for (var i = limit; i < rows.length; i++) rows[i].remove();
  }

  // -- failing now ------------------------------------------------------------------
  function p(className, children) {
    var el = document.createElement("p");
    el.className = className;
    el.append.apply(el, children);
    return el;
  }

  function onFailing(msg) {
    setText(document.querySelector('[data-count="failing"]'), String(msg.count));
    each("[data-failing-card]", function (card) {
      card.classList.toggle("card--bad", msg.count > 0);
      card.classList.toggle("card--ok", msg.count === 0);
    });
    var list = document.querySelector("[data-failing-list]");
    if (!list) return;
    var labels = list.parentNode;
    var empty = labels.querySelector(".js-failing-empty");
    if (empty) empty.classList.toggle("hidden", msg.count > 0);
    var items = msg.items.map(function (f) {
      var li = document.createElement("li");
      li.className = "failing";
      li.setAttribute("data-failing-workflow", String(f.workflow_id));
      var head = document.createElement("div");
      head.className = "failing-head";
      var name = link(f.workflow_url, f.workflow_name);
      name.className = "failing-name";
      var streak = document.createElement("span");
      streak.className = "failing-streak";
      streak.textContent = f.streak;
      head.append(name, " ", badge(f.status), " ", streak);
      var ago = document.createElement("span");
      ago.className = "ago";
      ago.textContent = "(" + f.since_ago + ")";
      li.append(head, p("failing-since", [list.getAttribute("data-since-label") + " ", timeEl(f.since_iso, f.since), " ", ago]));
      if (f.modules) {
        var strong = document.createElement("strong");
        strong.textContent = f.modules;
        li.appendChild(p("failing-modules", [list.getAttribute("data-modules-label") + " ", strong]));
      }
      if (f.error) li.appendChild(p("failing-error error-text wrap", [f.error]));
      li.appendChild(p("", [link(f.run_url, f.run_label)]));
      return li;
    });
    list.replaceChildren.apply(list, items);
    localise(list);
    flash(list);
  }

  function onRun(msg) {
    var run = msg.run;
    var containers = document.querySelectorAll('[data-run="' + run.run_id + '"]');
    Array.prototype.forEach.call(containers, function (box) {
      setBadge(box.querySelector(".js-status"), run.status);
      if (run.ended_at) setTime(box.querySelector(".js-ended"), run.ended_iso, run.ended_at);
      if (run.duration) setText(box.querySelector(".js-duration"), run.duration);
      each(".js-when-open", function (el) { el.classList.toggle("hidden", !run.open); }, box);
      each(".js-when-closed", function (el) { el.classList.toggle("hidden", run.open); }, box);
      var reason = box.querySelector(".js-reason");
      if (reason && run.reason) {
        reason.textContent = run.reason;
        reason.classList.remove("hidden");
      }
      run.steps.forEach(function (step) {
        // The data plan's node for this step (data-ordered runs): its colour is its status.
        var node = box.querySelector('[data-node="' + step.index + '"]');
        if (node && node.getAttribute("data-status") !== step.status.key) {
          node.setAttribute("class", "node node--" + step.status.tone);
          node.setAttribute("data-status", step.status.key);
        }
        var row = box.querySelector('[data-step="' + step.index + '"]');
        if (!row) return;
        setBadge(row.querySelector(".js-status"), step.status);
        setText(row.querySelector(".js-attempts"), String(step.attempts));
        setTime(row.querySelector(".js-sent"), step.sent_iso, step.sent_at);
        setText(row.querySelector(".js-step-duration"), step.duration);
        setText(row.querySelector(".js-message"), step.message, "");
        setText(row.querySelector(".js-error"), step.error, "");
        setText(row.querySelector(".js-output code"), step.output, "");
        if (step.progress) setProgress(box, step.index, step.progress);
      });
    });
    if (containers.length === 0 && msg.event === "run.started") {
      each("[data-prepend-runs] tbody", function (tbody) {
        var empty = tbody.querySelector(".empty");
        if (empty) empty.remove();
        var tr = runRow(run);
        tbody.insertBefore(tr, tbody.firstChild);
        var limit = parseInt(tbody.closest("[data-prepend-runs]").getAttribute("data-limit") || "0", 10);
        if (limit > 0) trim(tbody, limit);
        flash(tr);
      });
    }
    each('[data-last-run-for="' + run.workflow_id + '"]', function (box) {
      setBadge(box.querySelector(".js-status"), run.status);
      var a = box.querySelector(".js-link");
      if (a) {
        a.href = run.url;
        a.classList.remove("hidden");
      }
    });
  }

  // -- step progress and log lines (run page) ------------------------------------------
  var LOG_LINES = 200; // the server keeps as many (tornado_sched/runs.py LOG_TAIL_LINES)

  function setProgress(box, index, progress) {
    var report = box.querySelector('[data-step-report="' + index + '"]');
    if (!report || !progress) return;
    var bar = report.querySelector(".js-progress");
    if (bar && progress.percent !== null && progress.percent !== undefined) {
      bar.value = progress.percent;
      bar.textContent = String(progress.percent);
      setText(report.querySelector(".js-progress-text"), String(Math.round(progress.percent * 10) / 10) + "%", "");
    }
    setText(report.querySelector(".js-progress-message"), progress.message, "");
  }

  function onStep(msg) {
    each('[data-run="' + msg.run_id + '"]', function (box) {
      setProgress(box, msg.index, msg.progress);
      var pre = box.querySelector('[data-step-report="' + msg.index + '"] .js-log');
      if (!pre || !msg.lines || msg.lines.length === 0) return;
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var lines = pre.textContent ? pre.textContent.split("\n") : [];
      lines = lines.concat(msg.lines).slice(-LOG_LINES);
      pre.textContent = lines.join("\n");
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    });
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + path);
    socket.onopen = function () {
      delay = 1000;
      everOpened = true;
      setState("open");
    };
    socket.onmessage = function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.type === "module") onModule(msg);
      else if (msg.type === "run") onRun(msg);
      else if (msg.type === "failing") onFailing(msg);
      else if (msg.type === "step") onStep(msg);
      else if (msg.type === "resync") location.reload();
    };
    socket.onclose = function () {
      setState(everOpened ? "closed" : "connecting");
      window.setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  setState("connecting");
  connect();
}());
