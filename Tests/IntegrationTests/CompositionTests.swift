import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeCore
import ServeWire
import Testing

/// Composition and streaming (issue 14), with the real binaries: deployments that call each
/// other through handles (Swift, and process replicas through their node's handle listener),
/// responses that stream through every proxy, and clients that leave.
@Suite("Composition and streaming", .serialized)
struct CompositionTests {
    /// Front (`compose`, on the worker offering `front`) calls Model (`sleep`, on the worker
    /// offering `back`) through a handle; only Front is routed.
    static func shopConfig(model autoscaling: String) -> String {
        """
        applications:
          - name: shop
            route_prefix: /shop
            ingress: Front
            deployments:
              - name: Model
                handler: sleep
                max_ongoing_requests: 2
                \(autoscaling)
                ray_actor_options: {num_cpus: 0.1, resources: {back: 1}}
              - name: Front
                handler: compose
                user_config: {calls: [Model]}
                max_ongoing_requests: 200
                ray_actor_options: {num_cpus: 0.1, resources: {front: 1}}
        """
    }

    /// Two workers: one for the ingress deployment, one for its callee. Their node ids.
    static func frontAndBack(_ cluster: TestCluster) async throws -> (front: String, back: String) {
        let front = try await cluster.addWorker(cpus: 2, extra: ["--resources", #"{"front": 1}"#])
        let back = try await cluster.addWorker(cpus: 2, extra: ["--resources", #"{"back": 10}"#])
        let nodes = (try await FailureTests.nodeID(of: front), try await FailureTests.nodeID(of: back))
        _ = try await cluster.waitForNodes(2)
        return nodes
    }

    static func deployment(_ status: JSONValue, _ app: String, _ name: String) -> JSONValue? {
        status["applications"]?[app]?["deployments"]?[name]
    }

    static func replicas(_ status: JSONValue, _ app: String, _ name: String) -> [JSONValue] {
        Self.deployment(status, app, name)?["replicas"]?.arrayValue ?? []
    }

    @Test("only the ingress is routed; a cold start of the callee on another worker from a handle call; the callee scales 1 → N on handle traffic alone, and back")
    func handleTrafficScalesTheCallee() async throws {
        try await withCluster { cluster in
            let (frontNode, backNode) = try await Self.frontAndBack(cluster)
            try await cluster.deploy(Self.shopConfig(model: """
                autoscaling_config: {min_replicas: 0, initial_replicas: 0, max_replicas: 3, target_ongoing_requests: 1,
                                     upscale_delay_s: 0, downscale_delay_s: 2, downscale_to_zero_delay_s: 600,
                                     look_back_period_s: 1, metrics_interval_s: 0.5}
                """))
            _ = try await cluster.waitForRunning(app: "shop", deployment: "Front", replicas: 1)
            var status = try await cluster.status()
            #expect(Self.deployment(status, "shop", "Model")?["target_replicas"]?.doubleValue == 0)
            #expect(status["applications"]?["shop"]?["ingress"]?.stringValue == "Front")
            #expect(Self.replicas(status, "shop", "Front").first?["node_id"]?.stringValue == frontNode)

            // The first call reaches a Model at zero replicas: the handle waits through its cold start.
            let (code, body, _) = try await cluster.get("/shop/first?ms=1")
            #expect(code == 200, "\(body)")
            let answer = try JSONValue.parse(body)
            #expect(answer["Model"]?["status"]?.doubleValue == 200, "\(body)")
            #expect(answer["Model"]?["answer"]?.stringValue?.hasPrefix("slept 1") == true, "\(body)")
            status = try await cluster.status()
            #expect(Self.replicas(status, "shop", "Model").allSatisfy { $0["node_id"]?.stringValue == backNode })

            // Only the ingress has a route; Model is reached through handles alone.
            let (_, routes, _) = try await cluster.get("/-/routes")
            #expect(try JSONValue.parse(routes) == .object(["/shop": .string("shop")]))

            // Load on Front alone: Model's autoscaler sees the handle calls (queued at the
            // routers plus running) and adds replicas.
            let load = FailureTests.Load(port: cluster.httpPort, clients: 8) { client in
                (HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/shop/\(client)?ms=200"), nil)
            }
            try await FailureTests.eventually("Model scales up on handle traffic", timeout: .seconds(60), cluster) {
                let status = try await cluster.status()
                return (Self.deployment(status, "shop", "Model")?["target_replicas"]?.doubleValue ?? 0) >= 2
                    && Self.replicas(status, "shop", "Model").filter { $0["state"]?.stringValue == "RUNNING" }.count >= 2
            }
            let outcomes = await load.stop()
            let failed = outcomes.filter { $0.status != 200 }
            #expect(failed.isEmpty, "\(failed.count) of \(outcomes.count) failed: \(failed.prefix(3))")
            #expect(outcomes.allSatisfy { $0.body.contains("\"Model\"") })
            try await FailureTests.eventually("Model scales back down when the handle traffic stops", timeout: .seconds(60), cluster) {
                (Self.deployment(try await cluster.status(), "shop", "Model")?["target_replicas"]?.doubleValue ?? 9) <= 1
            }
        }
    }

    @Test("a client that leaves cancels the handler and the handle call it made, down to the callee's replica on another worker")
    func clientGoneCancelsTheCallee() async throws {
        try await withCluster { cluster in
            _ = try await Self.frontAndBack(cluster)
            try await cluster.deploy(Self.shopConfig(model: "num_replicas: 1"))
            _ = try await cluster.waitForRunning(app: "shop", deployment: "Model", replicas: 1)
            _ = try await cluster.waitForRunning(app: "shop", deployment: "Front", replicas: 1)
            func ongoing(_ name: String) async throws -> Int {
                Int(Self.replicas(try await cluster.status(), "shop", name).first?["ongoing_requests"]?.doubleValue ?? -1)
            }
            // A minute's work for Model, asked through Front, by a client on a raw socket.
            let client = try await RawClient.connect(port: cluster.httpPort)
            try await client.send("GET /shop/slow?ms=60000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try await FailureTests.eventually("Model is working on the request", timeout: .seconds(20), cluster) {
                let (model, front) = (try await ongoing("Model"), try await ongoing("Front"))
                return model == 1 && front == 1
            }
            await client.close()
            // Only cancellation frees them before the minute is up.
            try await FailureTests.eventually("Front's and Model's slots are free again", timeout: .seconds(10), cluster) {
                let (model, front) = (try await ongoing("Model"), try await ongoing("Front"))
                return model == 0 && front == 0
            }
            // The same over HTTP/2: the client resets its stream.
            let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: cluster.httpPort)
            let stream = try await connection.openStream(
                HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/shop/slow?ms=60000"), endStream: true)
            try await FailureTests.eventually("Model is working on the HTTP/2 request", timeout: .seconds(20), cluster) {
                let (model, front) = (try await ongoing("Model"), try await ongoing("Front"))
                return model == 1 && front == 1
            }
            stream.cancel()
            try await FailureTests.eventually("the reset frees Front's and Model's slots", timeout: .seconds(10), cluster) {
                let (model, front) = (try await ongoing("Model"), try await ongoing("Front"))
                return model == 0 && front == 0
            }
            await connection.closeNow()
        }
    }

    @Test("a client that leaves a process replica's stream closes the child's connection: its next write fails")
    func clientGoneClosesTheChildsConnection() async throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("closed-\(UUID().uuidString)")
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("endless-\(UUID().uuidString).py")
        try """
            import time
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
            import os
            class Endless(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                def do_GET(self):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    try:
                        for index in range(600):
                            data = b"data: %d\\n\\n" % index
                            self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
                            self.wfile.flush()
                            time.sleep(0.1)
                    except (BrokenPipeError, ConnectionResetError):
                        open("\(marker.path)", "w").write("closed")
                        self.close_connection = True
                def log_message(self, *args):
                    pass
            ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Endless).serve_forever()
            """.write(to: script, atomically: true, encoding: .utf8)
        defer {
            try? FileManager.default.removeItem(at: script)
            try? FileManager.default.removeItem(at: marker)
        }
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: endless
                    route_prefix: /endless
                    deployments:
                      - {name: Endless, command: ["python3", "\(script.path)"], ray_actor_options: {num_cpus: 0.1}}
                """)
            _ = try await cluster.waitForRunning(app: "endless", deployment: "Endless", replicas: 1)
            // Through the head's proxy to the worker, which asks the child over loopback.
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: cluster.httpPort)
            let response = try await pool.send(HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/endless"))
            var iterator = response.body.makeAsyncIterator()
            let first = try await iterator.next()
            #expect(first.map { String(buffer: $0) }?.hasPrefix("data: 0") == true)
            await pool.close()
            try await FailureTests.eventually("the child's write fails", timeout: .seconds(10), cluster) {
                FileManager.default.fileExists(atPath: marker.path)
            }
        }
    }

    @Test("a process replica calls other deployments through SERVE_HANDLE_URL: 401 without the token, 404 for an unknown target, the callee's answer otherwise")
    func processReplicaHandles() async throws {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("probe-\(UUID().uuidString).py")
        try """
            import json, os, urllib.request, urllib.error
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
            URL, TOKEN = os.environ["SERVE_HANDLE_URL"], os.environ["SERVE_HANDLE_TOKEN"]
            def call(path, token=True, body=None):
                headers = {"serve-handle-token": TOKEN} if token else {}
                request = urllib.request.Request(URL + path, data=body, headers=headers, method="POST" if body else "GET")
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        return [response.status, response.read().decode()]
                except urllib.error.HTTPError as error:
                    return [error.code, error.read().decode()]
            class Probe(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                def do_GET(self):
                    results = {
                        "no_token": call("/tools/Echo/x", token=False),
                        "unknown_app": call("/nope/Echo/x"),
                        "unknown_deployment": call("/tools/Nope/x"),
                        "get": call("/tools/Echo/some/path?q=1"),
                        "post": call("/tools/Echo/p", body=b"payload bytes"),
                        "other_app": call("/other/Env/"),
                        "url": URL,
                    }
                    body = json.dumps(results).encode()
                    self.send_response(200)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *args):
                    pass
            ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Probe).serve_forever()
            """.write(to: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: script) }
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: tools
                    route_prefix: /tools
                    ingress: Probe
                    deployments:
                      - {name: Echo, handler: echo, ray_actor_options: {num_cpus: 0.1}}
                      - {name: Probe, command: ["python3", "\(script.path)"], ray_actor_options: {num_cpus: 0.1}}
                  - name: other
                    route_prefix: /other
                    deployments:
                      - {name: Env, handler: env, ray_actor_options: {num_cpus: 0.1}}
                """)
            _ = try await cluster.waitForRunning(app: "tools", deployment: "Probe", replicas: 1)
            _ = try await cluster.waitForRunning(app: "other", deployment: "Env", replicas: 1)
            let (code, body, _) = try await cluster.get("/tools/probe")
            #expect(code == 200, "\(body)")
            let results = try JSONValue.parse(body)
            func result(_ name: String) -> (Int, String) {
                (Int(results[name]?.arrayValue?.first?.doubleValue ?? 0), results[name]?.arrayValue?.last?.stringValue ?? "")
            }
            #expect(result("no_token").0 == 401)
            #expect(result("unknown_app").0 == 404)
            #expect(result("unknown_deployment").0 == 404)
            #expect(result("get") == (200, "/some/path?q=1"))
            #expect(result("post") == (200, "payload bytes"))
            #expect(result("other_app").0 == 200 && result("other_app").1.contains("\"deployment\":\"Env\""), "\(body)")
            // The listener is on loopback only.
            #expect(results["url"]?.stringValue?.hasPrefix("http://127.0.0.1:") == true)
        }
    }

    /// Reads a stream of server-sent events; the time each `token` event arrived, from the
    /// request's start.
    static func tokenTimes(_ body: HTTPBody) async throws -> (times: [Duration], text: String) {
        let start = ContinuousClock.now
        var times: [Duration] = []
        var text = ""
        for try await chunk in body {
            text += String(buffer: chunk)
            // An event may arrive split over two chunks: count in the whole text so far.
            let seen = text.ranges(of: "event: token").count
            while times.count < seen { times.append(ContinuousClock.now - start) }
        }
        return (times, text)
    }

    @Test("server-sent events reach the client as they are made: Swift and Python replicas, through the head's proxy and a worker's, over HTTP/1.1 and HTTP/2, and relayed through a handle")
    func streamsAreNotBuffered() async throws {
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 2)
            let node = try await FailureTests.nodeID(of: worker)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: tokens
                    route_prefix: /tokens
                    deployments:
                      - {name: Tokens, handler: tokens, ray_actor_options: {num_cpus: 0.1}}
                  - name: py-tokens
                    route_prefix: /py-tokens
                    deployments:
                      - {name: PyTokens, command: ["python3", "tokens.py"], health_path: /healthz,
                         ray_actor_options: {num_cpus: 0.1, runtime_env: {working_dir: examples}}}
                  - name: chat
                    route_prefix: /chat
                    ingress: Chat
                    deployments:
                      - {name: Model, handler: tokens, ray_actor_options: {num_cpus: 0.1}}
                      - {name: Chat, handler: compose, user_config: {relay: Model}, ray_actor_options: {num_cpus: 0.1}}
                """)
            for (app, deployment) in [("tokens", "Tokens"), ("py-tokens", "PyTokens"), ("chat", "Chat"), ("chat", "Model")] {
                _ = try await cluster.waitForRunning(app: app, deployment: deployment, replicas: 1)
            }
            let workerPort = try await ProxyTests.proxyPort(of: node, cluster)
            // 4 tokens 400 ms apart: a proxy that buffered would deliver them together.
            let (count, pause) = (4, 400)
            for port in [cluster.httpPort, workerPort] {
                for prefix in ["/tokens", "/py-tokens", "/chat"] {
                    let path = "\(prefix)?n=\(count)&ms=\(pause)"
                    let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
                    let response = try await pool.send(HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: path), timeout: .seconds(30))
                    #expect(response.head.status == .ok)
                    #expect(response.head.headerFields[.contentType] == "text/event-stream")
                    #expect(response.head.headerFields[.contentLength] == nil)
                    let (times, text) = try await Self.tokenTimes(response.body)
                    await pool.close()
                    #expect(times.count == count, "\(path) on \(port): \(text)")
                    #expect(text.hasSuffix("data: [DONE]\n\n"), "\(text)")
                    if let first = times.first, let last = times.last {
                        #expect(last - first >= .milliseconds(pause * (count - 1) / 2), "\(path) on \(port): tokens at \(times)")
                    }
                }
                // HTTP/2: DATA frames as they are made.
                let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: port)
                let stream = try await connection.openStream(
                    HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/chat?n=\(count)&ms=\(pause)"), endStream: true)
                let response = try await stream.response()
                let (times, _) = try await Self.tokenTimes(response.body)
                await connection.closeNow()
                #expect(times.count == count)
                if let first = times.first, let last = times.last {
                    #expect(last - first >= .milliseconds(pause * (count - 1) / 2), "h2 on \(port): tokens at \(times)")
                }
            }
        }
    }

    /// An example config without its `http_options` (the test cluster's head has its own ports).
    static func example(_ name: String) throws -> String {
        let text = try String(contentsOf: packageRoot.appendingPathComponent("examples/\(name)"), encoding: .utf8)
        var lines: [Substring] = []
        var skipping = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("http_options:") {
                skipping = true
                continue
            }
            if skipping && line.hasPrefix(" ") { continue }
            skipping = false
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    @Test("examples/composition.yaml and examples/streaming.yaml answer as their comments say")
    func examples() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(try Self.example("composition.yaml"))
            _ = try await cluster.waitForRunning(app: "compose", deployment: "Ingress", replicas: 1)
            _ = try await cluster.waitForRunning(app: "ask", deployment: "Caller", replicas: 1)
            let (code, body, _) = try await cluster.get("/compose/predict?ms=50")
            let combined = try JSONValue.parse(body)
            #expect(code == 200, "\(body)")
            #expect(combined["Sentiment"]?["answer"]?.stringValue == "slept 50.0 ms\n", "\(body)")
            #expect(combined["Summary"]?["answer"]?.stringValue == "/predict?ms=50", "\(body)")
            let (asked, answer, _) = try await cluster.get("/ask/predict?ms=20")
            let wrapped = try JSONValue.parse(answer)
            #expect(asked == 200 && wrapped["answer"]?.stringValue == "slept 20.0 ms\n" && wrapped["by"]?.stringValue == "caller.py", "\(answer)")

            try await cluster.deploy(try Self.example("streaming.yaml"))
            for (app, deployment) in [("tokens", "Tokens"), ("py-tokens", "PyTokens"), ("chat", "Chat"), ("chat", "Model")] {
                _ = try await cluster.waitForRunning(app: app, deployment: deployment, replicas: 1)
            }
            for prefix in ["/tokens", "/py-tokens", "/chat"] {
                let (code, text, headers) = try await cluster.get("\(prefix)?n=3&ms=10&prompt=hi")
                #expect(code == 200 && headers[.contentType] == "text/event-stream", "\(prefix): \(text)")
                #expect(text.ranges(of: "event: token").count == 3 && text.contains("hi-2") && text.hasSuffix("data: [DONE]\n\n"), "\(prefix): \(text)")
            }
        }
    }

    /// VmRSS of a process, in bytes.
    static func resident(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return (Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0) * 1024
        }
        return 0
    }

    @Test("1,000 concurrent streams through the head's proxy to a worker: each gets every token, and the head and the worker stay within 64 MiB more memory")
    func thousandStreams() async throws {
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: tokens
                    route_prefix: /tokens
                    deployments:
                      - {name: Tokens, handler: tokens, max_ongoing_requests: 1000, ray_actor_options: {num_cpus: 0.1}}
                """)
            _ = try await cluster.waitForRunning(app: "tokens", deployment: "Tokens", replicas: 1)
            let streams = 1000
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: cluster.httpPort, maxIdleConnections: streams)
            defer { Task { await pool.close() } }
            // Warm up both processes' paths, then measure from there.
            _ = try await pool.send(HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/tokens?n=2&ms=1")).body.collect(upTo: 1 << 20)
            let (headBefore, workerBefore) = (Self.resident(cluster.head.process.processIdentifier), Self.resident(worker.process.processIdentifier))
            let started = NIOLockedValueBox(0)
            let peaks = NIOLockedValueBox((head: 0, worker: 0))
            let results = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<streams {
                    group.addTask {
                        let response = try await pool.send(
                            HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/tokens?n=3&ms=3000"), timeout: .seconds(60))
                        var text = ""
                        var first = true
                        for try await chunk in response.body {
                            text += String(buffer: chunk)
                            if first {
                                first = false
                                started.withLockedValue { $0 += 1 }
                            }
                        }
                        return text.ranges(of: "event: token").count
                    }
                }
                // While every stream is open (each has had its first token, none its last).
                group.addTask {
                    while started.withLockedValue({ $0 }) < streams { try await Task.sleep(for: .milliseconds(50)) }
                    peaks.withLockedValue {
                        $0 = (Self.resident(cluster.head.process.processIdentifier), Self.resident(worker.process.processIdentifier))
                    }
                    return -1
                }
                var results: [Int] = []
                for try await tokens in group where tokens >= 0 { results.append(tokens) }
                return results
            }
            #expect(results.count == streams && results.allSatisfy { $0 == 3 }, "\(results.filter { $0 != 3 }.prefix(5))")
            let (headPeak, workerPeak) = peaks.withLockedValue { $0 }
            let growth = (head: headPeak - headBefore, worker: workerPeak - workerBefore)
            print("1,000 open streams: head RSS \(headBefore >> 20) -> \(headPeak >> 20) MiB, worker RSS \(workerBefore >> 20) -> \(workerPeak >> 20) MiB")
            #expect(headPeak > 0 && workerPeak > 0)
            #expect(growth.head < 64 << 20 && growth.worker < 64 << 20, "head +\(growth.head >> 20) MiB, worker +\(growth.worker >> 20) MiB")
        }
    }
}

/// A client on a plain socket, for tests that leave in the middle of a request.
final class RawClient: Sendable {
    private let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
    }

    static func connect(port: Int) async throws -> RawClient {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
        return RawClient(channel: channel)
    }

    func send(_ text: String) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(string: text)).get()
    }

    func close() async {
        try? await self.channel.close().get()
    }
}
