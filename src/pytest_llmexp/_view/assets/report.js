// pytest-llmexp report: run table filters and the conversation panel. Text is inserted with
// textContent only, so nothing a model said can become markup.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("llmexp-data").textContent);
  var panel = document.getElementById("conversation");
  var content = panel.querySelector(".content");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(4).replace(/\.?0+$/, "");
    return String(value);
  }

  function applyFilters(section) {
    var status = section.querySelector("select[name=status]").value;
    var kase = section.querySelector("select[name=case]").value;
    var variantSelect = section.querySelector("select[name=variant]");
    var variant = variantSelect ? variantSelect.value : "";
    var rows = section.querySelectorAll("tr.run");
    var shown = 0;
    rows.forEach(function (row) {
      var ok = (!status || row.dataset.status === status) && (!kase || row.dataset.case === kase) &&
        (!variant || row.dataset.variant === variant);
      row.hidden = !ok;
      if (ok) shown += 1;
    });
    section.querySelector(".shown").textContent = shown + " of " + rows.length + " run(s)";
  }

  function showRun(id) {
    var run = data.runs[id];
    if (!run) return;
    content.replaceChildren();
    var title = run.experiment + (run.case ? " [" + run.case + "]" : "") + " · execution " + run.execution;
    content.appendChild(el("h2", null, title));
    var meta = el("p", "meta");
    meta.appendChild(el("span", "badge " + run.status, run.status));
    meta.appendChild(document.createTextNode(" run " + run.id + " · session " + run.session_id.slice(0, 12) +
      " · worker " + run.worker + (run.duration_s === null ? "" : " · " + run.duration_s.toFixed(2) + "s")));
    content.appendChild(meta);
    if (run.error_message && run.status !== "passed") {
      content.appendChild(el("pre", "error", (run.error_type ? run.error_type + ": " : "") + run.error_message));
    }
    var metrics = Object.keys(run.metrics);
    if (metrics.length) {
      var list = el("dl", "metrics");
      metrics.forEach(function (name) {
        list.appendChild(el("dt", null, name));
        list.appendChild(el("dd", null, fmt(run.metrics[name].value)));
      });
      content.appendChild(list);
    }
    content.appendChild(el("h3", null, "Prompts"));
    var prompts = el("ul", "prompts");
    run.prompts.forEach(function (p) {
      prompts.appendChild(el("li", null, p.name + " (" + p.role + ") version " + p.version));
    });
    content.appendChild(prompts);
    content.appendChild(el("h3", null, "Bots"));
    var bots = el("ul", "bots");
    run.bots.forEach(function (b) {
      bots.appendChild(el("li", null, (b.label || b.class_name) + " · " + b.model + " · temperature " + fmt(b.temperature) +
        (b.response_schema ? " · schema " + (b.response_schema.title || "object") : "")));
    });
    content.appendChild(bots);
    content.appendChild(el("h3", null, "Conversation"));
    if (!run.calls.length) content.appendChild(el("p", "empty", "No LLM call."));
    run.calls.forEach(function (call, i) {
      var box = el("div", "call");
      box.appendChild(el("div", "call-head", "call " + (i + 1) + " · " + (call.bot || "?") + " · " + call.model +
        " · " + fmt(call.prompt_tokens) + "+" + fmt(call.completion_tokens) + " tokens" +
        (call.latency_ms === null ? "" : " · " + Math.round(call.latency_ms) + " ms") +
        (call.replayed_from ? " · replayed" : "")));
      call.messages.forEach(function (m) {
        var msg = el("div", "message role-" + m.role);
        msg.appendChild(el("div", "role", m.role + (m.tool_call_id ? " " + m.tool_call_id : "")));
        var text = m.content;
        if (Array.isArray(text)) {
          text = text.map(function (p) { return p && p.text !== undefined ? p.text : "(" + ((p && p.type) || "part") + ")"; }).join("\n");
        }
        if (text || !m.tool_calls) msg.appendChild(el("pre", "text", text || ""));
        if (m.refusal) msg.appendChild(el("pre", "text refusal", "refused: " + m.refusal));
        (m.tool_calls || []).forEach(function (t) {
          var f = t["function"] || {};
          msg.appendChild(el("pre", "text tool-call", "calls " + f.name + "(" + (f.arguments || "") + ") [" + t.id + "]"));
        });
        box.appendChild(msg);
      });
      if (call.error) box.appendChild(el("pre", "error", call.error));
      content.appendChild(box);
    });
    panel.hidden = false;
    panel.classList.remove("wide");
    panel.dataset.run = id;
    panel.querySelector(".close").focus();
  }

  function lastReply(run) {
    // The last answer of what is measured: a judge's verdict is not the variant's output.
    for (var i = run.calls.length - 1; i >= 0; i--) {
      if (run.calls[i].judge) continue;
      var messages = run.calls[i].messages;
      var last = messages[messages.length - 1];
      if (last && last.role === "assistant") {
        var text = last.content;
        if (Array.isArray(text)) text = text.map(function (p) { return (p && p.text) || ""; }).join("\n");
        if (!text && last.tool_calls) {
          text = last.tool_calls.map(function (t) { var f = t["function"] || {}; return "calls " + f.name + "(" + (f.arguments || "") + ")"; }).join("\n");
        }
        return text || "";
      }
      if (run.calls[i].error) return "error: " + run.calls[i].error;
    }
    return run.error_message || "(no reply)";
  }

  function showCase(experiment, kase) {
    var matrix = (data.matrix || {})[experiment];
    if (!matrix) return;
    var byVariant = matrix.cases[kase] || {};
    content.replaceChildren();
    content.appendChild(el("h2", null, experiment + " · " + (kase || "(the only case)")));
    content.appendChild(el("p", "meta", "What each variant answered for this case, execution by execution."));
    var grid = el("div", "side-by-side");
    matrix.variants.forEach(function (variant) {
      var column = el("div", "variant-column");
      column.dataset.variant = variant;
      column.appendChild(el("h3", null, variant));
      var ids = byVariant[variant] || [];
      if (!ids.length) column.appendChild(el("p", "empty", "No run of this variant is in the report."));
      ids.forEach(function (id) {
        var run = data.runs[id];
        if (!run) return;
        var box = el("div", "call");
        var head = el("div", "call-head", "execution " + run.execution + " · ");
        head.appendChild(el("span", "badge " + run.status, run.status));
        var metrics = Object.keys(run.metrics).map(function (m) { return m + " " + fmt(run.metrics[m].value); });
        if (metrics.length) head.appendChild(document.createTextNode(" · " + metrics.join(" · ")));
        box.appendChild(head);
        box.appendChild(el("pre", "text reply", lastReply(run)));
        var open = el("button", "open-run", "conversation");
        open.type = "button";
        open.addEventListener("click", function () { showRun(id); });
        box.appendChild(open);
        column.appendChild(box);
      });
      grid.appendChild(column);
    });
    content.appendChild(grid);
    panel.hidden = false;
    panel.classList.add("wide");
    panel.dataset.case = kase;
    panel.querySelector(".close").focus();
  }

  document.querySelectorAll("tr.case").forEach(function (row) {
    row.addEventListener("click", function () { showCase(row.dataset.experiment, row.dataset.case); });
    row.addEventListener("keydown", function (event) {
      if (event.key === "Enter") showCase(row.dataset.experiment, row.dataset.case);
    });
  });

  document.querySelectorAll("section.experiment").forEach(function (section) {
    section.querySelectorAll("select.filter").forEach(function (select) {
      select.addEventListener("change", function () { applyFilters(section); });
    });
    section.querySelectorAll("tr.run").forEach(function (row) {
      row.addEventListener("click", function () { showRun(row.dataset.run); });
      row.addEventListener("keydown", function (event) {
        if (event.key === "Enter") showRun(row.dataset.run);
      });
    });
  });
  panel.querySelector(".close").addEventListener("click", function () { panel.hidden = true; });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") panel.hidden = true;
  });
})();
