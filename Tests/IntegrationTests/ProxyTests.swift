import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

/// The data plane on every node (issue 12), with the real binaries: a proxy on each worker,
/// local replicas first, `proxy_location`, serving on while the head is away, a draining
/// worker's proxy, and cold starts through a worker's proxy.
@Suite("A proxy on every node", .serialized)
struct ProxyTests {
    /// Each node's proxy address and status, by node id, from the nodes JSON.
    static func proxies(_ cluster: TestCluster) async throws -> [String: (address: String?, status: String)] {
        let (_, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
        var result: [String: (String?, String)] = [:]
        for node in (try JSONValue.parse(body))["nodes"]?.arrayValue ?? [] {
            guard let id = node["node_id"]?.stringValue else { continue }
            result[id] = (node["http_address"]?.stringValue, node["proxy_status"]?.stringValue ?? "?")
        }
        return result
    }

    /// Waits until `node`'s proxy is HEALTHY and returns its port.
    static func proxyPort(of node: String, _ cluster: TestCluster) async throws -> Int {
        var port: Int?
        try await FailureTests.eventually("node \(node)'s proxy is HEALTHY", timeout: .seconds(30), cluster) {
            guard let proxy = try await Self.proxies(cluster)[node], proxy.status == "HEALTHY",
                let address = proxy.address, let colon = address.lastIndex(of: ":")
            else { return false }
            port = Int(address[address.index(after: colon)...])
            return port != nil
        }
        return port!
    }

    static func get(_ port: Int, _ path: String, timeout: TimeAmount = .seconds(30)) async throws -> (Int, String) {
        let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
        defer { Task { await pool.close() } }
        let response = try await pool.send(HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: path), timeout: timeout)
        return (response.head.status.code, String(buffer: try await response.body.collect(upTo: 1 << 20)))
    }

    /// One worker with the `env` app's one replica; its node id and its proxy's port.
    static func oneWorkerServingEnv(_ cluster: TestCluster) async throws -> (node: String, port: Int) {
        let worker = try await cluster.addWorker(cpus: 2)
        let node = try await FailureTests.nodeID(of: worker)
        _ = try await cluster.waitForNodes(1)
        try await cluster.deploy(Self.envConfig(replicas: 1))
        _ = try await cluster.waitForRunning(app: "env", deployment: "Env", replicas: 1)
        return (node, try await Self.proxyPort(of: node, cluster))
    }

    static func envConfig(location: String = "EveryNode", replicas: Int = 2) -> String {
        """
        proxy_location: \(location)
        applications:
          - name: env
            route_prefix: /env
            deployments:
              - name: Env
                handler: env
                num_replicas: \(replicas)
                placement_strategy: SPREAD
                ray_actor_options: {num_cpus: 1}
        """
    }

    @Test("each worker's proxy answers, from the replica on its own node; the head's routes to either")
    func localFirst() async throws {
        try await withCluster { cluster in
            let first = try await cluster.addWorker(cpus: 2)
            let second = try await cluster.addWorker(cpus: 2)
            let nodes = [try await FailureTests.nodeID(of: first), try await FailureTests.nodeID(of: second)]
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(Self.envConfig())
            _ = try await cluster.waitForRunning(app: "env", deployment: "Env", replicas: 2)
            for node in nodes {
                let port = try await Self.proxyPort(of: node, cluster)
                for _ in 0..<10 {
                    let (status, body) = try await Self.get(port, "/env")
                    #expect(status == 200)
                    let answered = try JSONValue.parse(body)
                    #expect(answered["node_id"]?.stringValue == node, "answered by \(body)")
                }
                let (health, text) = try await Self.get(port, "/-/healthz")
                #expect(health == 200 && text.hasPrefix("success"))
                let (routes, json) = try await Self.get(port, "/-/routes")
                let table = try JSONValue.parse(json)
                #expect(routes == 200 && table["/env"]?.stringValue == "env")
            }
            // Both workers' proxies serve from the head's newest table.
            try await FailureTests.eventually("every worker's proxy has the head's newest table", timeout: .seconds(30), cluster) {
                let (_, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
                let json = try JSONValue.parse(body)
                guard let newest = json["route_table_version"]?.stringValue else { return false }
                let versions = (json["nodes"]?.arrayValue ?? []).filter { nodes.contains($0["node_id"]?.stringValue ?? "") }
                    .map { $0["proxy_table_version"]?.stringValue }
                return versions.count == 2 && versions.allSatisfy { $0 == newest }
            }
            // The head hosts nothing: its proxy routes to both workers.
            var seen = Set<String>()
            for _ in 0..<30 {
                let (status, body, _) = try await cluster.get("/env")
                #expect(status == 200)
                if let node = (try JSONValue.parse(body))["node_id"]?.stringValue { seen.insert(node) }
            }
            #expect(seen == Set(nodes))
        }
    }

    @Test("HeadOnly and Disabled start no proxy on workers; EveryNode starts them again")
    func proxyLocation() async throws {
        try await withCluster { cluster in
            let (node, port) = try await Self.oneWorkerServingEnv(cluster)
            for location in ["HeadOnly", "Disabled"] {
                try await cluster.deploy(Self.envConfig(location: location, replicas: 1))
                try await FailureTests.eventually("\(location): the worker's proxy stops", timeout: .seconds(30), cluster) {
                    guard let proxy = try await Self.proxies(cluster)[node] else { return false }
                    guard proxy.status == "NONE", proxy.address == nil else { return false }
                    // Nothing listens there any more.
                    return (try? await Self.get(port, "/-/healthz", timeout: .seconds(2))) == nil
                }
            }
            // Disabled: the head's proxy serves no application either.
            let (status, _, _) = try await cluster.get("/env")
            #expect(status == 404)
            try await cluster.deploy(Self.envConfig(replicas: 1))
            let again = try await Self.proxyPort(of: node, cluster)
            let (answer, body) = try await Self.get(again, "/env")
            let answered = try JSONValue.parse(body)
            #expect(answer == 200 && answered["node_id"]?.stringValue == node)
        }
    }

    @Test("the head killed under load on a worker's proxy: every request answered 200; the restarted head's tables reach the proxy")
    func headDies() async throws {
        try await withCluster { cluster in
            let (_, port) = try await Self.oneWorkerServingEnv(cluster)
            let load = FailureTests.Load(port: port, clients: 8) { _ in
                (HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/env"), nil)
            }
            try await load.waitForSuccesses(50)
            try await cluster.killHead()
            let before = load.count
            // Requests keep being answered while no head runs.
            try await load.waitForSuccesses(before + 200)
            try await cluster.restartHead()
            _ = try await cluster.waitForNodes(1)
            let outcomes = await load.stop()
            let failed = outcomes.filter { $0.status != 200 }
            #expect(failed.isEmpty, "\(failed.count) of \(outcomes.count) failed: \(failed.prefix(3))")
            // A deploy on the new head reaches the worker's proxy.
            try await cluster.deploy(
                Self.envConfig(replicas: 1) + "\n  - {name: echo, route_prefix: /echo, deployments: [{name: E, handler: echo}]}")
            try await FailureTests.eventually("the new head's table reaches the worker's proxy", timeout: .seconds(30), cluster) {
                let (status, body) = try await Self.get(port, "/-/routes")
                let table = try JSONValue.parse(body)
                return status == 200 && table["/echo"]?.stringValue == "echo"
            }
        }
    }

    @Test("a draining worker's proxy says 503 on /-/healthz while requests through it still succeed, then it exits")
    func drainingProxy() async throws {
        try await withCluster { cluster in
            let first = try await cluster.addWorker(cpus: 2, extra: ["--drain-timeout-s", "20"])
            let second = try await cluster.addWorker(cpus: 2)
            let node = try await FailureTests.nodeID(of: first)
            _ = try await FailureTests.nodeID(of: second)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(
                """
                applications:
                  - name: slow
                    route_prefix: /slow
                    deployments:
                      - {name: Slow, handler: sleep, num_replicas: 2, placement_strategy: SPREAD, user_config: {ms: 300}}
                """)
            _ = try await cluster.waitForRunning(app: "slow", deployment: "Slow", replicas: 2)
            let port = try await Self.proxyPort(of: node, cluster)
            let load = FailureTests.Load(port: port, clients: 4) { _ in
                (HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/slow"), nil)
            }
            try await load.waitForSuccesses(8)
            first.signal(SIGTERM)
            try await FailureTests.eventually("the draining proxy answers 503 on /-/healthz", timeout: .seconds(15), cluster) {
                let (status, body) = try await Self.get(port, "/-/healthz")
                return status == 503 && body.contains("This node is being drained.")
            }
            let during = load.successes
            try await load.waitForSuccesses(during + 8)
            let status = try await first.waitForExit(timeout: .seconds(60))
            #expect(status == 0)
            let outcomes = await load.stop()
            // Requests that were on their way when the proxy closed its listener fail to connect;
            // none that it accepted is answered with an error.
            let answeredBadly = outcomes.filter { $0.status != nil && $0.status != 200 }
            #expect(answeredBadly.isEmpty, "\(answeredBadly.prefix(3))")
        }
    }

    @Test("a request to a worker's proxy for a deployment at zero replicas starts one and is answered")
    func coldStartThroughWorker() async throws {
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 2)
            let node = try await FailureTests.nodeID(of: worker)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: lazy
                    route_prefix: /lazy
                    deployments:
                      - name: Lazy
                        handler: echo
                        autoscaling_config: {min_replicas: 0, initial_replicas: 0, max_replicas: 2, downscale_delay_s: 600}
                """)
            let port = try await Self.proxyPort(of: node, cluster)
            let status = try await cluster.status()
            #expect(status["applications"]?["lazy"]?["deployments"]?["Lazy"]?["target_replicas"]?.doubleValue == 0)
            let (answer, body) = try await Self.get(port, "/lazy/cold", timeout: .seconds(60))
            #expect(answer == 200 && body == "/cold")
        }
    }

    @Test("scaling down and up under load on a worker's proxy fails no request; the worker's --metrics-port counts them")
    func scaleUnderLoad() async throws {
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 4, extra: ["--http-host", "127.0.0.1", "--http-port", "0", "--metrics-port", "0"])
            let node = try await FailureTests.nodeID(of: worker)
            _ = try await cluster.waitForNodes(1)
            func deploy(_ replicas: Int) async throws {
                try await cluster.deploy(
                    """
                    applications:
                      - name: echo
                        route_prefix: /echo
                        deployments:
                          - {name: E, handler: echo, num_replicas: \(replicas), max_ongoing_requests: 2, ray_actor_options: {num_cpus: 0.5}}
                    """)
                _ = try await cluster.waitForRunning(app: "echo", deployment: "E", replicas: replicas)
            }
            try await deploy(3)
            let port = try await Self.proxyPort(of: node, cluster)
            let load = FailureTests.Load(port: port, clients: 8) { client in
                (HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/echo/\(client)"), nil)
            }
            for replicas in [1, 3, 1] {
                let before = load.successes
                try await deploy(replicas)
                try await load.waitForSuccesses(before + 100)
            }
            let outcomes = await load.stop()
            let failed = outcomes.filter { $0.status != 200 }
            #expect(failed.isEmpty, "\(failed.count) of \(outcomes.count) failed: \(failed.prefix(3))")
            // The worker's own metrics: its proxy's requests, labelled with its node.
            let output = try await worker.waitForOutput(matching: "metrics at /metrics")
            guard let line = output.split(separator: "\n").first(where: { $0.contains("metrics at /metrics") }),
                let match = line.firstMatch(of: /port=(\d+)/), let metricsPort = Int(match.1)
            else { throw HarnessFailure("no metrics port in:\n\(output)") }
            let (status, metrics) = try await Self.get(metricsPort, "/metrics")
            #expect(status == 200)
            let counted = metrics.split(separator: "\n").first {
                $0.hasPrefix("serve_requests_total{application=\"echo\",deployment=\"E\",node=\"\(node)\",code=\"200\"}")
            }
            #expect(counted.flatMap { Int($0.split(separator: " ").last ?? "") } == outcomes.count, "\(metrics)")
        }
    }

    @Test("hop-by-hop fields never reach a replica: TE gzip, Connection and what it names, Keep-Alive, Proxy-Connection, Upgrade; over HTTP/1.1 and h2c, to Swift replicas here and on another node, and to a child")
    func hopByHop() async throws {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("headers-\(UUID().uuidString).py")
        try """
            import json, os
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
            class Echo(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                def do_GET(self):
                    body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *args):
                    pass
            ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
            """.write(to: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: script) }
        try await withCluster(headCPUs: 2) { cluster in
            let proxyOnly = try await cluster.addWorker(cpus: 0)
            let node = try await FailureTests.nodeID(of: proxyOnly)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(
                """
                applications:
                  - name: echo
                    route_prefix: /echo
                    deployments: [{name: E, handler: echo, ray_actor_options: {num_cpus: 0.5}}]
                  - name: child
                    route_prefix: /child
                    deployments: [{name: C, command: [python3, "\(script.path)"], ray_actor_options: {num_cpus: 0.5}}]
                """)
            _ = try await cluster.waitForRunning(app: "child", deployment: "C", replicas: 1)
            _ = try await cluster.waitForRunning(app: "echo", deployment: "E", replicas: 1)
            let workerPort = try await Self.proxyPort(of: node, cluster)
            let headers = [
                ["TE: gzip"], ["TE: gzip, trailers"], ["Connection: close"], ["Connection: X-Secret", "X-Secret: 1"],
                ["Keep-Alive: timeout=5"], ["Proxy-Connection: keep-alive"], ["Connection: Upgrade", "Upgrade: websocket"],
            ]
            for port in [cluster.httpPort, workerPort] {
                for protocolFlag in ["--http1.1", "--http2-prior-knowledge"] {
                    for set in headers {
                        let extra = set.flatMap { ["-H", $0] }
                        for path in ["/echo/x", "/child/x"] {
                            let (status, body) = try Self.curl("http://127.0.0.1:\(port)\(path)", [protocolFlag] + extra)
                            #expect(status == 200, "\(set) \(protocolFlag) \(path) on :\(port): \(status) \(body)")
                            if path == "/child/x", status == 200 {
                                let seen = try JSONValue.parse(body)
                                // Over HTTP/2 `X-Secret` is a plain field (no Connection header names it).
                                let names = ["te", "connection", "keep-alive", "proxy-connection", "upgrade", "transfer-encoding"]
                                    + (protocolFlag == "--http1.1" ? ["x-secret"] : [])
                                for name in names {
                                    #expect(seen[name] == nil, "\(name) reached the child: \(set) \(protocolFlag) on :\(port): \(body)")
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// curl's status and body (a 10 s limit, so that a hang fails the test instead of stalling it).
    static func curl(_ url: String, _ arguments: [String]) throws -> (Int, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = ["-s", "-m", "10", "-w", "\n%{http_code}"] + arguments + [url]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard let newline = text.lastIndex(of: "\n") else { return (0, text) }
        return (Int(text[text.index(after: newline)...]) ?? 0, String(text[..<newline]))
    }
}
