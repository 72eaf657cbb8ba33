// Times on every page are server-rendered in the server's zone (TIME_ZONE) as
// <time datetime="ISO">. This switch shows them in the browser's zone instead, and
// remembers the choice in localStorage. Without it (or without JS) nothing changes.
// Elements marked data-keep-zone (a workflow's own fire times) are left alone.
(function () {
  "use strict";

  var KEY = "tsched.zone";
  var button = document.getElementById("zone-switch");
  var note = document.getElementById("zone-note");
  var serverNote = note ? note.textContent : "";

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function format(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function wantLocal() {
    try { return window.localStorage.getItem(KEY) === "local"; } catch (e) { return false; }
  }

  function browserZone() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "local"; } catch (e) { return "local"; }
  }

  function apply(root) {
    var local = wantLocal();
    Array.prototype.forEach.call((root || document).querySelectorAll("time[datetime]"), function (t) {
      if (t.hasAttribute("data-keep-zone")) return;
      if (!t.hasAttribute("data-server-text")) t.setAttribute("data-server-text", t.textContent);
      var when = new Date(t.getAttribute("datetime"));
      t.textContent = local && !isNaN(when) ? format(when) : t.getAttribute("data-server-text");
    });
  }

  function render() {
    var local = wantLocal();
    apply(document);
    if (note) {
      note.textContent = local ? note.getAttribute("data-local").replace("%(zone)s", browserZone()) : serverNote;
    }
    if (button) {
      button.textContent = button.getAttribute(local ? "data-server" : "data-local");
      button.setAttribute("aria-pressed", local ? "true" : "false");
    }
  }

  if (button) {
    button.classList.remove("hidden");
    button.addEventListener("click", function () {
      try { window.localStorage.setItem(KEY, wantLocal() ? "server" : "local"); } catch (e) { return; }
      render();
    });
  }
  window.tschedTime = { apply: apply };
  render();
}());
