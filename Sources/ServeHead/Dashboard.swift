import HTTPTypes

/// The dashboard (DESIGN.md "Dashboard"): one page that `GET /` on the admin port serves,
/// with its CSS and JavaScript inside it and inside this binary, because the machines that run
/// a cluster often reach no CDN. Plain JavaScript polls the admin API's JSON once a second
/// (`/api/serve/applications/`, `/api/cluster/nodes`, `/api/serve/events`,
/// `/api/serve/history`) and redraws: applications → deployments → replicas, a timeline per
/// deployment (SVG drawn here, with the target changes marked), nodes and events.
///
/// Every value from the API reaches the page as text (`textContent`, attributes), never as
/// markup: application names, reasons and replica messages come from configs and processes.
/// The page's own errors are counted in `data-error-count` on `<body>` and shown at the top,
/// so the browser test (and a person) can see them; `data-renders` counts the redraws.
enum Dashboard {
    /// Nothing but this page's inline code and the API's own origin may be used: a page that
    /// reached for an outside asset would show a CSP error rather than quietly depend on it.
    static let headerFields: HTTPFields = [
        .contentType: "text/html; charset=utf-8",
        .cacheControl: "no-store",
        .contentSecurityPolicy:
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
    ]

    static let page = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <link rel="icon" href="data:,">
        <title>swift-serve</title>
        <style>
        :root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #fff; }
        header { display: flex; gap: 16px; align-items: baseline; padding: 10px 20px; border-bottom: 1px solid var(--line); background: var(--bg); position: sticky; top: 0; z-index: 1; }
        header h1 { font-size: 18px; margin: 0; }
        header nav a { margin-right: 12px; color: var(--fg); }
        .muted { color: var(--muted); font-weight: normal; }
        main { padding: 0 20px 40px; }
        h2 { font-size: 16px; margin: 24px 0 8px; }
        h3 { font-size: 15px; margin: 0 0 6px; }
        h4 { font-size: 14px; margin: 10px 0 6px; }
        .app { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin-bottom: 12px; }
        .deployment { border-top: 1px solid var(--line); padding-top: 4px; }
        .row { display: grid; grid-template-columns: minmax(0, 1fr) 560px; gap: 16px; align-items: start; }
        @media (max-width: 1000px) { .row { grid-template-columns: minmax(0, 1fr); } }
        .replicas { overflow-x: auto; }
        table { border-collapse: collapse; width: 100%; }
        th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { font-weight: 600; color: var(--muted); font-size: 12px; }
        td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
        code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; white-space: nowrap; }
        .badge { display: inline-block; padding: 0 6px; border-radius: 10px; font-size: 11px; font-weight: 600; border: 1px solid currentColor; }
        .ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); } .off { color: var(--muted); }
        .message { color: var(--warn); margin: 4px 0; }
        #errors { background: #ffebe9; color: var(--bad); padding: 8px 20px; white-space: pre-wrap; }
        #connection.bad { font-weight: 600; }
        figure { margin: 0; }
        svg.timeline { background: var(--bg); border: 1px solid var(--line); border-radius: 4px; }
        svg.timeline .grid { stroke: var(--line); stroke-width: 1; }
        svg.timeline text { font-size: 10px; fill: var(--muted); }
        svg.timeline polyline { fill: none; stroke-width: 1.8; }
        svg.timeline .decision line { stroke: #8250df; stroke-width: 1; stroke-dasharray: 2 2; }
        svg.timeline .decision path { fill: #8250df; }
        .legend { font-size: 12px; color: var(--muted); }
        .legend span { margin-right: 10px; white-space: nowrap; }
        .legend i { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 4px; }
        .bar { display: inline-block; width: 80px; height: 8px; background: var(--bg); border: 1px solid var(--line); vertical-align: middle; margin-left: 6px; }
        .bar i { display: block; height: 100%; background: #0969da; }
        .resource { white-space: nowrap; }
        .empty { color: var(--muted); }
        </style>
        </head>
        <body data-error-count="0" data-renders="0">
        <header>
          <h1>swift-serve</h1>
          <nav><a href="#applications">Applications</a><a href="#nodes">Nodes</a><a href="#events">Events</a></nav>
          <span id="connection" class="muted">connecting…</span>
        </header>
        <div id="errors" hidden></div>
        <main>
          <noscript><p>This page draws the admin API's JSON with JavaScript; without it, read
          <a href="/api/serve/applications/">/api/serve/applications/</a>, <a href="/api/cluster/nodes">/api/cluster/nodes</a>,
          <a href="/api/serve/events">/api/serve/events</a> and <a href="/api/serve/history">/api/serve/history</a>.</p></noscript>
          <section><h2 id="applications">Applications</h2><div id="apps"></div></section>
          <section><h2 id="nodes">Nodes</h2><div id="node-list"></div></section>
          <section><h2 id="events">Events <span class="muted">newest first</span></h2><div id="event-list"></div></section>
        </main>
        <script>
        "use strict";
        const POLL_MS = 1000;
        const SVG_NS = "http://www.w3.org/2000/svg";
        const SERIES = [
          { key: "target", label: "target replicas", color: "#8250df", dash: "5 3" },
          { key: "running", label: "running replicas", color: "#1a7f37" },
          { key: "ongoing", label: "ongoing requests", color: "#0969da" },
          { key: "queued", label: "queued requests", color: "#cf222e" },
        ];
        const EVENTS_SHOWN = 200;

        // The page's own errors: counted on <body> for the browser test, shown for a person.
        const pageErrors = [];
        function noteError(error) {
          pageErrors.push(String(error && error.stack ? error.stack : error));
          document.body.dataset.errorCount = String(pageErrors.length);
          const box = document.getElementById("errors");
          box.hidden = false;
          box.textContent = "This page failed: " + pageErrors.slice(-3).join("\n");
        }
        window.addEventListener("error", (event) => noteError(event.error || event.message));
        window.addEventListener("unhandledrejection", (event) => noteError(event.reason));

        // An element; strings become text nodes (never markup), null and false are skipped.
        function h(tag, attributes, ...children) {
          const element = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
          for (const [name, value] of Object.entries(attributes || {})) {
            if (value !== undefined && value !== null && value !== false) element.setAttribute(name, String(value));
          }
          for (const child of children.flat()) {
            if (child === undefined || child === null || child === false) continue;
            element.append(child instanceof Node ? child : String(child));
          }
          return element;
        }

        const STATE_CLASS = {
          RUNNING: "ok", HEALTHY: "ok", ALIVE: "ok",
          DEPLOYING: "warn", UPDATING: "warn", UPSCALING: "warn", DOWNSCALING: "warn", STARTING: "warn", PENDING: "warn",
          DRAINING: "warn", DRAINED: "off", DELETING: "off", STOPPING: "off", NONE: "off",
          UNHEALTHY: "bad", DEPLOY_FAILED: "bad", DEAD: "bad",
        };
        function badge(state) {
          return h("span", { class: "badge " + (STATE_CLASS[state] || "off") }, state || "?");
        }
        function number(value) {
          if (typeof value !== "number" || !isFinite(value)) return "?";
          return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, "");
        }
        function clock(unixSeconds) {
          return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
        }
        function byName(object) {
          return Object.entries(object || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
        }

        // Applications → deployments → replicas, each deployment with its timeline.
        function renderApplications(status, history) {
          const apps = byName(status.applications);
          if (apps.length === 0) return [h("p", { class: "empty" }, "No applications are deployed.")];
          return apps.map(([name, app]) =>
            h("article", { class: "app", "data-app": name },
              h("h3", {}, name, " ", badge(app.status), " ", h("code", { class: "muted" }, app.route_prefix || "")),
              byName(app.deployments).map(([deployment, detail]) =>
                renderDeployment(name, deployment, detail, history, deployment === app.ingress))));
        }

        // `ingress`: whether this deployment takes the application's HTTP traffic (the others
        // are reached through handles).
        function renderDeployment(app, name, deployment, history, ingress) {
          const replicas = deployment.replicas || [];
          const running = replicas.filter((replica) => replica.state === "RUNNING").length;
          const autoscaling = deployment.autoscaling;
          const sizing = autoscaling ? `autoscaling ${autoscaling.min_replicas}–${autoscaling.max_replicas}` : "fixed size";
          const last = autoscaling && autoscaling.last_decision;
          return h("div", { class: "deployment", "data-deployment": `${app}/${name}` },
            h("h4", {}, name, " ", badge(deployment.status),
              h("span", { class: "muted", "data-role": ingress ? "ingress" : "handles" },
                ` ${ingress ? "ingress" : "via handles"} · ${running} of ${number(deployment.target_replicas)} running · ${sizing}`)),
            deployment.message ? h("p", { class: "message" }, deployment.message) : null,
            last ? h("p", { class: "muted" }, `last decision ${clock(last.time)}: ${last.before} → ${last.after}, ${last.reason}`) : null,
            h("div", { class: "row" },
              h("div", { class: "replicas" }, renderReplicas(replicas)),
              renderTimeline(history, `${app}/${name}`)));
        }

        function renderReplicas(replicas) {
          if (replicas.length === 0) return h("p", { class: "empty" }, "No replicas.");
          return h("table", {},
            h("thead", {}, h("tr", {}, h("th", {}, "replica"), h("th", {}, "state"), h("th", {}, "node"),
              h("th", { class: "num" }, "ongoing"), h("th", {}, "message"))),
            h("tbody", {}, replicas.map((replica) =>
              h("tr", { "data-replica": replica.replica_id },
                h("td", {}, h("code", {}, replica.replica_id)),
                h("td", {}, badge(replica.state)),
                h("td", {}, replica.node_id ? h("code", { title: replica.node_id }, shortNode(replica.node_id)) : h("span", { class: "muted" }, "none")),
                h("td", { class: "num" }, number(replica.ongoing_requests)),
                h("td", { class: replica.state === "PENDING" ? "message" : "" }, replica.message || "")))));
        }

        function shortNode(id) {
          return id.length > 16 ? id.slice(0, 14) + "…" : id;
        }

        // The timeline: each series is a step function (a sample holds until the next, the last
        // until now), over the last window_s seconds, or since the deployment's first sample when
        // that is later (a minute at least), so that a young deployment's steps are not squeezed
        // against "now"; target changes are marked where they happened.
        function renderTimeline(history, key) {
          const W = 560, H = 170, left = 34, right = 10, top = 12, bottom = 22;
          const series = (history.deployments || {})[key] || { samples: [], decisions: [] };
          const now = history.now;
          const first = Math.min(now, ...series.samples.map((sample) => sample.t), ...series.decisions.map((decision) => decision.t));
          const start = Math.max(now - history.window_s, Math.min(first, now - 60));
          const span = now - start;
          const x = (t) => left + (Math.min(Math.max(t, start), now) - start) / span * (W - left - right);
          let max = 1;
          for (const sample of series.samples) for (const { key: k } of SERIES) max = Math.max(max, sample[k]);
          max = niceCeiling(max);
          const y = (value) => H - bottom - value / max * (H - top - bottom);
          const svg = h("svg:svg", { class: "timeline", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
            "aria-label": `${key}: replicas and requests over the last ${number(Math.round(span))} s` });
          for (const fraction of [0, 0.5, 1]) {
            const value = max * fraction;
            svg.append(h("svg:line", { class: "grid", x1: left, x2: W - right, y1: y(value), y2: y(value) }),
              h("svg:text", { x: left - 4, y: y(value) + 3, "text-anchor": "end" }, number(value)));
          }
          for (const fraction of [0, 1 / 3, 2 / 3, 1]) {
            const ago = Math.round(span * (1 - fraction));
            svg.append(h("svg:text", { x: x(start + span * fraction), y: H - 6, "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle" },
              ago === 0 ? "now" : `−${ago >= 120 ? number(Math.round(ago / 6) / 10) + " min" : ago + " s"}`));
          }
          if (series.samples.length === 0) {
            svg.append(h("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no samples yet"));
          }
          // The target last, dashed: on top of the running line when they are equal.
          for (const { key: k, color, dash } of SERIES.slice(1).concat(SERIES.slice(0, 1))) {
            if (series.samples.length === 0) break;
            const points = [];
            series.samples.forEach((sample, index) => {
              if (index > 0) points.push([x(sample.t), y(series.samples[index - 1][k])]);
              points.push([x(sample.t), y(sample[k])]);
            });
            points.push([x(now), y(series.samples[series.samples.length - 1][k])]);
            svg.append(h("svg:polyline", { class: "series", "data-series": k, stroke: color, "stroke-dasharray": dash,
              points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ") }));
          }
          for (const decision of series.decisions) {
            const dx = x(decision.t);
            const up = decision.after > decision.before;
            const arrow = up ? `M${dx - 4},${top + 6} L${dx + 4},${top + 6} L${dx},${top - 1} Z` : `M${dx - 4},${top - 1} L${dx + 4},${top - 1} L${dx},${top + 6} Z`;
            svg.append(h("svg:g", { class: "decision", "data-kind": decision.kind },
              h("svg:title", {}, `${clock(decision.t)} ${decision.kind} ${decision.before} → ${decision.after}: ${decision.reason}`),
              h("svg:line", { x1: dx, x2: dx, y1: top, y2: H - bottom }),
              h("svg:path", { d: arrow })));
          }
          const legend = h("div", { class: "legend" },
            SERIES.map(({ label, color }) => h("span", {}, h("i", { style: `background:${color}` }), label)),
            h("span", {}, "▲▼ target changes (hover for the reason)"));
          return h("figure", {}, svg, legend);
        }

        function niceCeiling(value) {
          for (const step of [1, 2, 4, 5, 8, 10]) if (value <= step) return step;
          const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
          for (const factor of [1, 2, 5, 10]) if (value <= factor * magnitude) return factor * magnitude;
          return value;
        }

        // Nodes, each resource as used of total.
        function renderNodes(nodes) {
          const list = nodes.nodes || [];
          if (list.length === 0) return [h("p", { class: "empty" }, "No nodes have registered.")];
          return [h("table", {},
            h("thead", {}, h("tr", {}, ["node", "type", "state", "address", "proxy", "resources used / total", "replicas"].map((title) => h("th", {}, title)))),
            h("tbody", {}, list.map((node) =>
              h("tr", { "data-node": node.node_id },
                h("td", {}, h("code", { title: node.node_id }, shortNode(node.node_id))),
                h("td", {}, node.node_type || ""),
                h("td", {}, badge(node.state)),
                h("td", {}, h("code", {}, node.address || "")),
                h("td", {}, badge(node.proxy_status), node.http_address ? h("code", { class: "muted" }, " " + node.http_address) : null,
                  node.proxy_message ? h("div", { class: "message" }, node.proxy_message) : null),
                h("td", {}, renderResources(node.resources_total || {}, node.resources_available || {})),
                h("td", { class: "num" }, String((node.replicas || []).length))))))];
        }

        function renderResources(total, available) {
          return byName(total).map(([name, amount]) => {
            const used = Math.max(0, amount - (available[name] ?? 0));
            const share = amount > 0 ? Math.min(100, used / amount * 100) : 0;
            const format = name === "memory" ? bytes : number;
            return h("div", { class: "resource", "data-resource": name },
              `${name} ${format(used)} / ${format(amount)}`,
              h("span", { class: "bar", title: `${share.toFixed(0)}% used` }, h("i", { style: `width:${share.toFixed(1)}%` })));
          });
        }

        function bytes(value) {
          const units = ["B", "KiB", "MiB", "GiB", "TiB"];
          let unit = 0;
          while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
          return `${number(Math.round(value * 10) / 10)} ${units[unit]}`;
        }

        // Events, newest first.
        function renderEvents(events) {
          const list = (events.events || []).slice().reverse();
          if (list.length === 0) return [h("p", { class: "empty" }, "No events yet.")];
          const shown = list.slice(0, EVENTS_SHOWN);
          return [
            list.length > shown.length ? h("p", { class: "muted" }, `The newest ${shown.length} of ${list.length}.`) : null,
            h("table", {},
              h("thead", {}, h("tr", {}, h("th", {}, "time"), h("th", {}, "kind"), h("th", {}, "deployment"),
                h("th", { class: "num" }, "before → after"), h("th", {}, "reason"))),
              h("tbody", {}, shown.map((event) =>
                h("tr", { "data-kind": event.kind },
                  h("td", { title: new Date(event.time * 1000).toISOString() }, clock(event.time)),
                  h("td", {}, event.kind),
                  h("td", {}, event.deployment ? h("code", {}, event.deployment) : ""),
                  h("td", { class: "num" }, `${event.before} → ${event.after}`),
                  h("td", {}, event.reason))))),
          ];
        }

        async function getJSON(path) {
          const response = await fetch(path, { cache: "no-store" });
          if (!response.ok) throw new Error(`${path} answered ${response.status}`);
          return response.json();
        }

        function setConnection(ok, text) {
          const connection = document.getElementById("connection");
          connection.className = ok ? "muted" : "bad";
          connection.textContent = text;
        }

        // One poll, then the next a second after it ends (never two at once).
        async function poll() {
          let answers;
          try {
            answers = await Promise.all(["/api/serve/applications/", "/api/cluster/nodes", "/api/serve/events", "/api/serve/history"].map(getJSON));
          } catch (error) {
            // The head is down or restarting: say so, keep the last view, and keep trying.
            setConnection(false, `the head does not answer (${error.message}); retrying`);
            setTimeout(poll, POLL_MS);
            return;
          }
          setTimeout(poll, POLL_MS);
          const [status, nodes, events, history] = answers;
          // Not while the pointer is on a timeline: a redraw would take away the mark's reason it shows.
          if (!document.querySelector("svg.timeline:hover")) {
            document.getElementById("apps").replaceChildren(...renderApplications(status, history));
          }
          document.getElementById("node-list").replaceChildren(...renderNodes(nodes));
          document.getElementById("event-list").replaceChildren(...renderEvents(events).filter(Boolean));
          setConnection(true, `live · updated ${clock(history.now)}`);
          document.body.dataset.renders = String(Number(document.body.dataset.renders) + 1);
        }
        poll();
        </script>
        </body>
        </html>
        """#
}
