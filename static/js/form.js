// The workflow form's live preview of the next fire times: asks
// /workflows/preview (JSON) while the crontab lines, shift or zone change. Without
// JS the "Preview fire times" button posts the form and the server renders the same
// list. Also makes sure the first field with an error has the focus.
(function () {
  "use strict";

  var first = document.querySelector("[autofocus]");
  if (first && document.activeElement !== first) first.focus();

  var box = document.querySelector("[data-preview]");
  var form = box && box.closest("form");
  if (!box || !form || !window.fetch) return;
  var out = box.querySelector(".js-preview");
  var names = ["execute_cron_list", "execute_shift_time", "execute_shift_unit", "timezone"];
  var timer = null;
  var asked = 0;

  function field(name) { return form.elements.namedItem(name); }

  function show(data) {
    var nodes = [];
    var messages = [];
    Object.keys(data.errors || {}).forEach(function (key) { messages = messages.concat(data.errors[key]); });
    if (messages.length) {
      var p = document.createElement("p");
      p.className = "field-error";
      p.textContent = messages.join("; ");
      nodes.push(p);
    } else if (data.fire_times.length) {
      var ol = document.createElement("ol");
      ol.className = "upcoming";
      data.fire_times.forEach(function (fire) {
        var li = document.createElement("li");
        var t = document.createElement("time");
        t.setAttribute("datetime", fire.iso);
        t.setAttribute("data-keep-zone", "");
        t.textContent = fire.text;
        li.appendChild(t);
        ol.appendChild(li);
      });
      nodes.push(ol);
    } else {
      var none = document.createElement("p");
      none.className = "muted";
      none.textContent = box.getAttribute("data-empty") || "—";
      nodes.push(none);
    }
    out.replaceChildren.apply(out, nodes);
  }

  function ask() {
    var params = new URLSearchParams();
    names.forEach(function (name) {
      var el = field(name);
      if (el) params.set(name, el.value);
    });
    var mine = ++asked;
    window.fetch(box.getAttribute("data-preview") + "?" + params.toString(), {
      credentials: "same-origin", headers: { "Accept": "application/json" }
    }).then(function (response) {
      return response.ok ? response.json() : null;
    }).then(function (data) {
      if (data && mine === asked) show(data);
    }).catch(function () { /* keep the last preview */ });
  }

  names.forEach(function (name) {
    var el = field(name);
    if (!el) return;
    ["input", "change"].forEach(function (type) {
      el.addEventListener(type, function () {
        window.clearTimeout(timer);
        timer = window.setTimeout(ask, 350);
      });
    });
  });
}());
