import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import ServeCore
import ServeWire
import Testing

/// Failures with the real binaries (issue 7): a worker killed or frozen under load, a replica
/// that crashes or fails its health checks, graceful shutdown of a worker and of the head.
@Suite("Failure behaviour", .serialized)
struct FailureTests {
    /// What a load client saw: every request ends in one of these.
    struct Outcome: Sendable {
        var status: Int?
        var body: String
        var error: String?
    }

    /// Clients sending requests back to back until stopped; each keeps its own connection pool.
    final class Load: Sendable {
        let outcomes = NIOLockedValueBox<[Outcome]>([])
        let stopped = NIOLockedValueBox(false)
        private let tasks = NIOLockedValueBox<[Task<Void, Never>]>([])

        init(port: Int, clients: Int, request: @escaping @Sendable (Int) -> (HTTPRequest, ByteBuffer?)) {
            let tasks = (0..<clients).map { client in
                Task {
                    let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
                    while !self.stopped.withLockedValue({ $0 }) {
                        let (head, body) = request(client)
                        var outcome = Outcome(status: nil, body: "", error: nil)
                        do {
                            let response = try await pool.send(head, body: body, timeout: .seconds(30))
                            outcome.status = response.head.status.code
                            outcome.body = String(buffer: try await response.body.collect(upTo: 1 << 20))
                        } catch {
                            outcome.error = "\(error)"
                        }
                        self.outcomes.withLockedValue { $0.append(outcome) }
                    }
                    await pool.close()
                }
            }
            self.tasks.withLockedValue { $0 = tasks }
        }

        var count: Int { self.outcomes.withLockedValue { $0.count } }
        var successes: Int { self.outcomes.withLockedValue { $0.filter { $0.status == 200 }.count } }

        func waitForSuccesses(_ count: Int, timeout: Duration = .seconds(30)) async throws {
            let deadline = ContinuousClock.now + timeout
            while self.successes < count {
                guard ContinuousClock.now < deadline else {
                    throw HarnessFailure(
                        "only \(self.successes) of \(count) successes; last outcomes: \(self.outcomes.withLockedValue { $0.suffix(5) })"
                    )
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        }

        func stop() async -> [Outcome] {
            self.stopped.withLockedValue { $0 = true }
            for task in self.tasks.withLockedValue({ $0 }) { await task.value }
            return self.outcomes.withLockedValue { $0 }
        }
    }

    static func replicas(_ status: JSONValue, _ app: String, _ deployment: String) -> [(
        id: String, node: String, state: String
    )] {
        (status["applications"]?[app]?["deployments"]?[deployment]?["replicas"]?.arrayValue ?? []).map {
            ($0["replica_id"]?.stringValue ?? "", $0["node_id"]?.stringValue ?? "", $0["state"]?.stringValue ?? "")
        }
    }

    /// Node ids by the worker's printed banner ("serve-worker n-… connecting").
    static func nodeID(of worker: Child) async throws -> String {
        let output = try await worker.waitForOutput(matching: "connecting to")
        guard let match = output.firstMatch(of: /serve-worker (\S+) connecting/) else {
            throw HarnessFailure("no node id in:\n\(output)")
        }
        return String(match.1)
    }

    /// Polls `condition` until it holds or `timeout` passes.
    static func eventually(
        _ what: String,
        timeout: Duration,
        _ cluster: TestCluster,
        _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw HarnessFailure("not within \(timeout): \(what)\n\(cluster.logs)")
    }

    static func spreadConfig(handler: String = "echo", replicas: Int, extra: String = "") -> String {
        """
        applications:
          - name: hello
            route_prefix: /hello
            deployments:
              - name: Hello
                handler: \(handler)
                num_replicas: \(replicas)
                placement_strategy: SPREAD
                ray_actor_options: {num_cpus: 1}
        \(extra)
        """
    }

    @Test(
        "SIGKILL one of two workers under load: replicas move to the other within the heartbeat timeout plus start time, every request is answered"
    )
    func killWorkerUnderLoad() async throws {
        try await withCluster(headArguments: ["--heartbeat-timeout-s", "2"]) { cluster in
            let doomed = try await cluster.addWorker(cpus: 4)
            let survivor = try await cluster.addWorker(cpus: 4)
            let doomedID = try await Self.nodeID(of: doomed)
            let survivorID = try await Self.nodeID(of: survivor)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(Self.spreadConfig(replicas: 4))
            let before = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 4)
            #expect(Set(Self.replicas(before, "hello", "Hello").map(\.node)) == [doomedID, survivorID])

            // GETs (retried once on another replica if theirs dies) and POSTs (never retried
            // once a replica may have seen them) from six clients at once.
            let load = Load(port: cluster.httpPort, clients: 6) { client in
                if client % 2 == 0 {
                    return (HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/hello/get"), nil)
                }
                let body = "post from \(client)"
                return (
                    HTTPRequest(
                        method: .post,
                        scheme: "http",
                        authority: "127.0.0.1",
                        path: "/hello/post",
                        headerFields: [.contentLength: String(body.utf8.count)]
                    ),
                    ByteBuffer(string: body)
                )
            }
            try await load.waitForSuccesses(200)
            let killedAt = ContinuousClock.now
            doomed.signal(SIGKILL)

            // Replaced on the survivor: the heartbeat timeout (2 s; a SIGKILL closes the socket,
            // so it is sooner) plus the start time of an echo replica.
            try await Self.eventually("4 RUNNING replicas on the survivor", timeout: .seconds(15), cluster) {
                let replicas = Self.replicas(try await cluster.status(), "hello", "Hello")
                return replicas.count == 4 && replicas.allSatisfy { $0.node == survivorID && $0.state == "RUNNING" }
            }
            let replacedIn = ContinuousClock.now - killedAt
            #expect(replacedIn < .seconds(2 + 5), "replaced in \(replacedIn)")
            let afterReplacement = load.successes
            try await load.waitForSuccesses(afterReplacement + 200)
            let outcomes = await load.stop()

            let unanswered = outcomes.filter { $0.status == nil }
            #expect(unanswered.isEmpty, "requests without an answer: \(unanswered.prefix(3))")
            let failures = outcomes.filter { $0.status != nil && $0.status != 200 }
            for failure in failures {
                #expect(failure.status == 502 || failure.status == 503, "\(failure)")
                #expect(
                    failure.body.contains("replica") || failure.body.contains("node"),
                    "an error must say why: \(failure)"
                )
            }
            #expect(outcomes.count > 400)
            print(
                "kill under load: \(outcomes.count) requests, \(failures.count) answered 502/503, replaced in \(replacedIn)"
            )
            let (_, nodesBody) = try await cluster.adminCall(.get, "/api/cluster/nodes")
            let states = Dictionary(
                uniqueKeysWithValues: (try JSONValue.parse(nodesBody))["nodes"]?.arrayValue?.compactMap { node in
                    node["node_id"]?.stringValue.map { ($0, node["state"]?.stringValue ?? "") }
                } ?? []
            )
            #expect(states[doomedID] == "DEAD" && states[survivorID] == "ALIVE")
            let (_, metrics) = try await cluster.adminCall(.get, "/metrics")
            #expect(metrics.contains("serve_nodes{state=\"DEAD\"} 1") && metrics.contains("serve_nodes{state=\"ALIVE\"} 1"), "\(metrics)")
            #expect(metrics.contains("# TYPE serve_request_retries_total counter"))
        }
    }

    @Test(
        "a frozen worker (SIGSTOP) is declared DEAD by the heartbeat timeout; requests on it get 502 with the reason; thawed, it rejoins and its stale replica is stopped"
    )
    func frozenWorker() async throws {
        try await withCluster(headArguments: ["--heartbeat-timeout-s", "2"]) { cluster in
            let frozen = try await cluster.addWorker(cpus: 2, extra: ["--head-timeout-s", "1"])
            let other = try await cluster.addWorker(cpus: 2)
            let frozenID = try await Self.nodeID(of: frozen)
            let otherID = try await Self.nodeID(of: other)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(Self.spreadConfig(handler: "sleep", replicas: 2))
            let before = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2)
            let frozenReplica = try #require(Self.replicas(before, "hello", "Hello").first { $0.node == frozenID }?.id)

            // Slow POSTs spread over both replicas; then the frozen worker stops answering.
            let started = ContinuousClock.now
            let answers = try await withThrowingTaskGroup(of: (Int, String, Duration).self) { group in
                for _ in 0..<6 {
                    group.addTask {
                        let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: cluster.httpPort)
                        defer { Task { await pool.close() } }
                        let body = "x"
                        let response = try await pool.send(
                            HTTPRequest(
                                method: .post,
                                scheme: "http",
                                authority: "127.0.0.1",
                                path: "/hello/?ms=6000",
                                headerFields: [.contentLength: "1"]
                            ),
                            body: ByteBuffer(string: body),
                            timeout: .seconds(20)
                        )
                        let text = String(buffer: try await response.body.collect(upTo: 1 << 16))
                        return (response.head.status.code, text, ContinuousClock.now - started)
                    }
                }
                try await Self.eventually("requests running on both replicas", timeout: .seconds(5), cluster) {
                    let replicas =
                        try await cluster.status()["applications"]?["hello"]?["deployments"]?["Hello"]?["replicas"]?
                        .arrayValue ?? []
                    return replicas.count == 2 && replicas.allSatisfy { ($0["ongoing_requests"]?.doubleValue ?? 0) > 0 }
                }
                frozen.signal(SIGSTOP)
                var answers: [(Int, String, Duration)] = []
                for try await answer in group { answers.append(answer) }
                return answers
            }
            let failed = answers.filter { $0.0 != 200 }
            #expect(!failed.isEmpty, "some requests ran on the frozen worker: \(answers)")
            for (status, body, after) in failed {
                #expect(status == 502, "\(body)")
                #expect(body.contains("no heartbeat"), "the answer says the node was declared dead: \(body)")
                #expect(after < .seconds(5), "answered when the node was declared dead, not later: \(after)")
            }
            #expect(answers.filter { $0.0 == 200 }.count == 6 - failed.count)

            // Replaced on the other worker; the frozen one is DEAD.
            try await Self.eventually("2 RUNNING replicas on the other worker", timeout: .seconds(15), cluster) {
                let replicas = Self.replicas(try await cluster.status(), "hello", "Hello")
                return replicas.count == 2 && replicas.allSatisfy { $0.node == otherID && $0.state == "RUNNING" }
            }
            let (code, _, _) = try await cluster.get("/hello/?ms=1")
            #expect(code == 200)

            // Thawed, it finds the head silent, registers again, and its old replica (replaced
            // already) is stopped, not served: the deployment stays at 2.
            frozen.signal(SIGCONT)
            try await Self.eventually("the thawed worker ALIVE again", timeout: .seconds(20), cluster) {
                let nodes = try await cluster.waitForNodes(1)
                return nodes.contains { $0["node_id"]?.stringValue == frozenID && $0["state"]?.stringValue == "ALIVE" }
            }
            _ = try await cluster.head.waitForOutput(
                matching: "stopping replica \(frozenReplica) on node \(frozenID)",
                timeout: .seconds(10)
            )
            let after = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2)
            #expect(Self.replicas(after, "hello", "Hello").allSatisfy { $0.node == otherID })
            _ = try await frozen.waitForOutput(matching: "replica stopped", timeout: .seconds(10))
        }
    }

    /// A command deployment that can be made sick (its health path answers 500) or crash.
    static let flakyServer = """
        import os
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        sick = False
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def answer(self, status, text):
                body = text.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def do_GET(self):
                global sick
                if self.path == "/healthz":
                    return self.answer(500 if sick else 200, "sick" if sick else "ok")
                if self.path == "/sick":
                    sick = True
                    return self.answer(200, "sick from now on")
                if self.path == "/crash":
                    os._exit(7)
                self.answer(200, "pid %d" % os.getpid())
            def log_message(self, *args):
                pass
        ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
        """

    @Test(
        "a command replica that fails three health checks in a row, or crashes, is replaced; the request that crashed it gets 502 with the reason"
    )
    func unhealthyAndCrashingReplicas() async throws {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("flaky-\(UUID().uuidString).py")
        try Self.flakyServer.write(to: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: script) }
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: flaky
                    route_prefix: /flaky
                    deployments:
                      - name: Flaky
                        command: ["python3", "\(script.path)"]
                        health_path: /healthz
                        health_check_period_s: 0.3
                        health_check_timeout_s: 2
                        num_replicas: 1
                        ray_actor_options: {num_cpus: 0.5}
                """
            )
            func replicaID() async throws -> String? {
                let replicas = Self.replicas(try await cluster.status(), "flaky", "Flaky")
                return replicas.count == 1 && replicas[0].state == "RUNNING" ? replicas[0].id : nil
            }
            _ = try await cluster.waitForRunning(app: "flaky", deployment: "Flaky", replicas: 1)
            let first = try #require(try await replicaID())

            // Sick: its health path answers 500 from now on. Three checks 0.3 s apart later it
            // is replaced.
            let (sick, _, _) = try await cluster.get("/flaky/sick")
            #expect(sick == 200)
            var second: String?
            try await Self.eventually("a new replica after the health checks failed", timeout: .seconds(20), cluster) {
                second = try await replicaID()
                return second != nil && second != first
            }
            let (_, events) = try await cluster.adminCall(.get, "/api/serve/events")
            #expect(events.contains("failed 3 health checks in a row"), "\(events)")
            let (code, body, _) = try await cluster.get("/flaky/")
            #expect(code == 200 && body.hasPrefix("pid"), "\(body)")

            // Crash: the request that killed it is answered 502 with the reason, and the
            // replica is replaced.
            let (crashed, reason, _) = try await cluster.get("/flaky/crash")
            #expect(crashed == 502, "\(reason)")
            #expect(reason.contains("failed"), "\(reason)")
            try await Self.eventually("a new replica after the crash", timeout: .seconds(20), cluster) {
                let third = try await replicaID()
                return third != nil && third != second
            }
            let (_, afterCrash) = try await cluster.adminCall(.get, "/api/serve/events")
            #expect(afterCrash.contains("exited with status 7"), "\(afterCrash)")
            let (again, _, _) = try await cluster.get("/flaky/")
            #expect(again == 200)
            // A replica that dies after serving is replaced at once, not held back as a start
            // failure: the deployment stays HEALTHY.
            let status = try await cluster.status()
            #expect(
                status["applications"]?["flaky"]?["deployments"]?["Flaky"]?["status"]?.stringValue == "HEALTHY",
                "\(status.jsonString())"
            )
        }
    }

    @Test(
        "SIGTERM on a worker under load: DRAINING, replacements start elsewhere first, in-flight requests finish, it exits 0, and no request fails"
    )
    func drainWorker() async throws {
        try await withCluster { cluster in
            let leaving = try await cluster.addWorker(cpus: 2)
            let staying = try await cluster.addWorker(cpus: 2)
            let leavingID = try await Self.nodeID(of: leaving)
            let stayingID = try await Self.nodeID(of: staying)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(Self.spreadConfig(handler: "sleep", replicas: 2))
            let before = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2)
            #expect(Set(Self.replicas(before, "hello", "Hello").map(\.node)) == [leavingID, stayingID])

            let load = Load(port: cluster.httpPort, clients: 4) { client in
                if client % 2 == 0 {
                    return (
                        HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/hello/?ms=150"), nil
                    )
                }
                return (
                    HTTPRequest(
                        method: .post,
                        scheme: "http",
                        authority: "127.0.0.1",
                        path: "/hello/?ms=150",
                        headerFields: [.contentLength: "2"]
                    ),
                    ByteBuffer(string: "hi")
                )
            }
            try await load.waitForSuccesses(20)
            leaving.signal(SIGTERM)
            try await Self.eventually("the leaving node DRAINING", timeout: .seconds(5), cluster) {
                let (_, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
                return (try JSONValue.parse(body))["nodes"]?.arrayValue?.contains {
                    $0["node_id"]?.stringValue == leavingID && $0["state"]?.stringValue == "DRAINING"
                } ?? false
            }
            #expect(try await leaving.waitForExit(timeout: .seconds(30)) == 0, "\(leaving.output)")
            let after = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2)
            #expect(Self.replicas(after, "hello", "Hello").allSatisfy { $0.node == stayingID })
            let served = load.successes
            try await load.waitForSuccesses(served + 20)
            let outcomes = await load.stop()
            let bad = outcomes.filter { $0.status != 200 }
            #expect(bad.isEmpty, "a graceful drain fails no request: \(bad.prefix(5))")
            #expect(leaving.output.contains("drained: no replica left on this node"), "\(leaving.output)")
            _ = try await cluster.head.waitForOutput(matching: "node \(leavingID) left after draining", timeout: .seconds(10))
        }
    }

    @Test("SIGTERM on the head: it stops accepting, lets the request in flight finish, and exits 0")
    func headShutdown() async throws {
        let cluster = try await TestCluster(headCPUs: 1, headArguments: ["--shutdown-timeout-s", "10"])
        defer { Task { await cluster.stop() } }
        _ = try await cluster.waitForNodes(1)
        try await cluster.deploy(
            Self.spreadConfig(handler: "sleep", replicas: 1).replacingOccurrences(
                of: "num_cpus: 1",
                with: "num_cpus: 0.5"
            )
        )
        _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
        let slow = Task { try await cluster.get("/hello/?ms=1500") }
        try await Self.eventually("the slow request running", timeout: .seconds(5), cluster) {
            let replicas =
                try await cluster.status()["applications"]?["hello"]?["deployments"]?["Hello"]?["replicas"]?.arrayValue
                ?? []
            return (replicas.first?["ongoing_requests"]?.doubleValue ?? 0) > 0
        }
        cluster.head.signal(SIGTERM)
        _ = try await cluster.head.waitForOutput(matching: "no longer accepting HTTP requests")
        // New connections are refused while the old request finishes.
        let fresh = HTTP1ConnectionPool(host: "127.0.0.1", port: cluster.httpPort)
        await #expect(throws: (any Error).self) {
            _ = try await fresh.send(
                HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/hello/?ms=1"),
                timeout: .seconds(5)
            )
        }
        await fresh.close()
        let (code, body, _) = try await slow.value
        #expect(code == 200, "\(body)\n\(cluster.logs)")
        #expect(try await cluster.head.waitForExit(timeout: .seconds(30)) == 0, "\(cluster.logs)")
    }

    @Test(
        "scale-down: the stopped replica's in-flight requests get graceful_shutdown_timeout_s, then an explicit 503; the survivor's finish"
    )
    func scaleDownDrainBound() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            func config(_ replicas: Int) -> String {
                """
                applications:
                  - name: slow
                    route_prefix: /slow
                    deployments:
                      - name: Slow
                        handler: sleep
                        num_replicas: \(replicas)
                        graceful_shutdown_timeout_s: 1
                        ray_actor_options: {num_cpus: 0.5}
                """
            }
            try await cluster.deploy(config(2))
            _ = try await cluster.waitForRunning(app: "slow", deployment: "Slow", replicas: 2)
            // Four 6 s requests over the two replicas.
            let requests = (0..<4).map { _ in
                Task { () throws -> (Int, String, ContinuousClock.Instant) in
                    let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: cluster.httpPort)
                    defer { Task { await pool.close() } }
                    let response = try await pool.send(
                        HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/slow/?ms=6000"),
                        timeout: .seconds(30)
                    )
                    return (
                        response.head.status.code, String(buffer: try await response.body.collect(upTo: 1 << 16)),
                        ContinuousClock.now
                    )
                }
            }
            var ongoing: [String: Int] = [:]
            try await Self.eventually("all four requests running, on both replicas", timeout: .seconds(5), cluster) {
                let replicas =
                    try await cluster.status()["applications"]?["slow"]?["deployments"]?["Slow"]?["replicas"]?
                    .arrayValue ?? []
                ongoing = Dictionary(
                    uniqueKeysWithValues: replicas.map {
                        ($0["replica_id"]?.stringValue ?? "", Int($0["ongoing_requests"]?.doubleValue ?? 0))
                    }
                )
                return ongoing.count == 2 && ongoing.values.reduce(0, +) == 4 && ongoing.values.allSatisfy { $0 > 0 }
            }
            let scaledAt = ContinuousClock.now
            try await cluster.deploy(config(1))
            let kept = try await cluster.waitForRunning(app: "slow", deployment: "Slow", replicas: 1)
            let survivor = try #require(Self.replicas(kept, "slow", "Slow").first?.id)
            let stoppedCount = try #require(ongoing.first { $0.key != survivor }?.value)
            var answers: [(Int, String, ContinuousClock.Instant)] = []
            for request in requests { answers.append(try await request.value) }
            let cut = answers.filter { $0.0 != 200 }
            #expect(cut.count == stoppedCount, "the stopped replica's requests: \(answers.map { ($0.0, $0.1) })")
            for (status, body, at) in cut {
                #expect(status == 503, "\(body)")
                #expect(body.contains("graceful_shutdown_timeout_s"), "\(body)")
                #expect(
                    at - scaledAt < .seconds(4),
                    "cut at the 1 s graceful timeout, not at the end: \(at - scaledAt)"
                )
            }
            #expect(answers.filter { $0.0 == 200 }.count == 4 - stoppedCount)
        }
    }

    @Test(
        "a route marked idempotent: POSTs whose worker is SIGKILLed mid-request are sent again to another replica, body and all"
    )
    func idempotentRoute() async throws {
        try await withCluster { cluster in
            let doomed = try await cluster.addWorker(cpus: 3)
            try await cluster.addWorker(cpus: 3)
            let doomedID = try await Self.nodeID(of: doomed)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(
                """
                applications:
                  - name: slow
                    route_prefix: /slow
                    idempotent: true
                    deployments:
                      - name: Slow
                        handler: sleep
                        num_replicas: 2
                        placement_strategy: SPREAD
                        ray_actor_options: {num_cpus: 1}
                  - name: echo
                    route_prefix: /echo
                    idempotent: true
                    deployments:
                      - name: Echo
                        handler: echo
                        ray_actor_options: {num_cpus: 0.5}
                """
            )
            _ = try await cluster.waitForRunning(app: "slow", deployment: "Slow", replicas: 2)
            _ = try await cluster.waitForRunning(app: "echo", deployment: "Echo", replicas: 1)
            // The kept body is what the replica gets.
            let body = String(repeating: "payload ", count: 1000)
            let (echoed, echo) = try await cluster.post("/echo/", body: body)
            #expect(echoed == 200 && echo == body)

            // 300 ms POSTs from six clients: several are on the doomed worker when it dies.
            let load = Load(port: cluster.httpPort, clients: 6) { _ in
                (
                    HTTPRequest(
                        method: .post,
                        scheme: "http",
                        authority: "127.0.0.1",
                        path: "/slow/?ms=300",
                        headerFields: [.contentLength: "4"]
                    ),
                    ByteBuffer(string: "data")
                )
            }
            try await Self.eventually("requests running on the doomed worker's replica", timeout: .seconds(10), cluster)
            {
                let replicas =
                    try await cluster.status()["applications"]?["slow"]?["deployments"]?["Slow"]?["replicas"]?
                    .arrayValue ?? []
                return replicas.contains {
                    $0["node_id"]?.stringValue == doomedID && ($0["ongoing_requests"]?.doubleValue ?? 0) > 0
                }
            }
            doomed.signal(SIGKILL)
            try await Self.eventually("both replicas on the survivor", timeout: .seconds(15), cluster) {
                let replicas = Self.replicas(try await cluster.status(), "slow", "Slow")
                return replicas.count == 2 && replicas.allSatisfy { $0.node != doomedID && $0.state == "RUNNING" }
            }
            try await load.waitForSuccesses(load.successes + 12)
            let outcomes = await load.stop()
            let failed = outcomes.filter { $0.status != 200 }
            #expect(failed.isEmpty, "every POST retried elsewhere: \(failed.prefix(5))")
            #expect(
                cluster.head.output.contains("retrying an idempotent request on another replica"),
                "no request was cut by the kill"
            )
        }
    }

    @Test("a draining worker with nowhere to move its replicas stops them itself after --drain-timeout-s, letting their requests finish")
    func drainTimeout() async throws {
        try await withCluster { cluster in
            let only = try await cluster.addWorker(cpus: 2, extra: ["--drain-timeout-s", "1"])
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                Self.spreadConfig(handler: "sleep", replicas: 1)
                    .replacingOccurrences(of: "ray_actor_options: {num_cpus: 1}", with: "ray_actor_options: {num_cpus: 1}\n        graceful_shutdown_timeout_s: 10")
            )
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
            let slow = Task { try await cluster.get("/hello/?ms=3000") }
            try await Self.eventually("the slow request running", timeout: .seconds(5), cluster) {
                let replicas =
                    try await cluster.status()["applications"]?["hello"]?["deployments"]?["Hello"]?["replicas"]?.arrayValue ?? []
                return (replicas.first?["ongoing_requests"]?.doubleValue ?? 0) > 0
            }
            only.signal(SIGTERM)
            let (code, body, _) = try await slow.value
            #expect(code == 200, "the request in flight finishes: \(body)")
            #expect(try await only.waitForExit(timeout: .seconds(20)) == 0, "\(only.output)")
            #expect(only.output.contains("the drain timeout passed with 1 replica(s) still here"), "\(only.output)")
        }
    }

    @Test("a replica stopped while it is still starting is stopped once up, not left running unseen")
    func stopWhileStarting() async throws {
        let pidFile = FileManager.default.temporaryDirectory.appendingPathComponent("slow-start-\(UUID().uuidString).pid")
        defer { try? FileManager.default.removeItem(at: pidFile) }
        let script = """
            import os, time
            from http.server import BaseHTTPRequestHandler, HTTPServer
            open("\(pidFile.path)", "w").write(str(os.getpid()))
            time.sleep(1.5)
            HTTPServer(("127.0.0.1", int(os.environ["PORT"])), BaseHTTPRequestHandler).serve_forever()
            """
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: slow
                    route_prefix: /slow
                    deployments:
                      - name: SlowStart
                        command: ["python3", "-c", \(JSONValue.string(script).jsonString())]
                        graceful_shutdown_timeout_s: 1
                        ray_actor_options: {num_cpus: 0.5}
                """
            )
            try await Self.eventually("the child process started", timeout: .seconds(10), cluster) {
                FileManager.default.fileExists(atPath: pidFile.path)
            }
            let pid = try #require(Int32(try String(contentsOf: pidFile, encoding: .utf8)))
            // Deleted while the replica is still STARTING (the child is not listening yet).
            let (deleted, _) = try await cluster.adminCall(.delete, "/api/serve/applications/slow")
            #expect(deleted == 200)
            _ = try await worker.waitForOutput(matching: "a stop came while it started", timeout: .seconds(20))
            try await Self.eventually("the child process gone", timeout: .seconds(10), cluster) {
                kill(pid, 0) != 0
            }
            let status = try await cluster.status()
            #expect(status["applications"]?["slow"] == nil, "\(status.jsonString())")
        }
    }
}
