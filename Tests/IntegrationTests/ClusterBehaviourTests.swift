import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import ServeCore
import ServeWire
import Testing

/// Limits, failures and lifecycles of a running cluster, through the real binaries.
@Suite("Cluster behaviour", .serialized)
struct ClusterBehaviourTests {
    @Test("max_ongoing_requests holds requests at the router; past max_queued_requests they get 503")
    func queueLimits() async throws {
        try await withCluster(headCPUs: 1) { cluster in
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: slow
                    route_prefix: /slow
                    deployments:
                      - name: Slow
                        handler: sleep
                        num_replicas: 1
                        max_ongoing_requests: 1
                        max_queued_requests: 1
                        ray_actor_options: {num_cpus: 0.5}
                """)
            _ = try await cluster.waitForRunning(app: "slow", deployment: "Slow", replicas: 1)
            // One runs, one waits at the router; the third finds the queue full. The requests
            // are placed one after another so that each finds the state the previous one left.
            let first = Task { try await cluster.get("/slow?ms=3000") }
            try await self.waitForOngoing(cluster, 1)
            let second = Task { try await cluster.get("/slow?ms=10") }
            try await self.waitForQueued(cluster, 1)
            let (third, body, _) = try await cluster.get("/slow?ms=10")
            #expect(third == 503)
            #expect(body.contains("max_queued_requests"), "\(body)")
            #expect(try await first.value.0 == 200)
            #expect(try await second.value.0 == 200)
        }
    }

    private func waitForOngoing(_ cluster: TestCluster, _ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            let (_, metrics) = try await cluster.adminCall(.get, "/metrics")
            if metrics.contains("serve_ongoing_requests{application=\"slow\",deployment=\"Slow\"} \(count)") { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw HarnessFailure("the replica never reported \(count) ongoing request(s)")
    }

    private func waitForQueued(_ cluster: TestCluster, _ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            let (_, metrics) = try await cluster.adminCall(.get, "/metrics")
            // Labelled with the proxy's node too.
            let line = metrics.split(separator: "\n").first { $0.hasPrefix("serve_router_queued_requests{application=\"slow\",deployment=\"Slow\"") }
            if line?.hasSuffix("} \(count)") == true { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw HarnessFailure("the router never held \(count) request(s)")
    }

    @Test("a request past request_timeout_s gets 504")
    func requestTimeout() async throws {
        try await withCluster(headCPUs: 1) { cluster in
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                http_options: {request_timeout_s: 0.5}
                applications:
                  - name: slow
                    route_prefix: /slow
                    deployments:
                      - name: Slow
                        handler: sleep
                        ray_actor_options: {num_cpus: 0.5}
                """)
            _ = try await cluster.waitForRunning(app: "slow", deployment: "Slow", replicas: 1)
            let (code, body, _) = try await cluster.get("/slow?ms=5000")
            #expect(code == 504, "\(body)")
            let (fast, _, _) = try await cluster.get("/slow?ms=1")
            #expect(fast == 200)
        }
    }

    @Test("a replica that cannot start is retried with backoff; its app shows DEPLOY_FAILED with the reason")
    func failingReplica() async throws {
        try await withCluster(headCPUs: 1) { cluster in
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: broken
                    route_prefix: /broken
                    deployments:
                      - name: Broken
                        command: ["python3", "-c", "import sys; print('model weights missing'); sys.exit(3)"]
                        ray_actor_options: {num_cpus: 0.5}
                """)
            let deadline = ContinuousClock.now + .seconds(60)
            var status = JSONValue.null
            while ContinuousClock.now < deadline {
                status = try await cluster.status()
                if status["applications"]?["broken"]?["status"]?.stringValue == "DEPLOY_FAILED" { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let app = status["applications"]?["broken"]
            #expect(app?["status"]?.stringValue == "DEPLOY_FAILED", "\(status.jsonString())")
            #expect(app?["deployments"]?["Broken"]?["status"]?.stringValue == "UNHEALTHY")
            let message = app?["deployments"]?["Broken"]?["message"]?.stringValue ?? ""
            #expect(message.contains("model weights missing"), "\(message)")
            #expect(message.contains("status 3"), "\(message)")
            // A request does not wait for a replica that keeps failing: 503 with the reason.
            let (code, body, _) = try await cluster.get("/broken")
            #expect(code == 503 && body.contains("model weights missing"), "\(code) \(body)")
        }
    }

    @Test("a changed user_config reconfigures running replicas in place; a changed handler replaces them")
    func lightweightUpdate() async throws {
        try await withCluster(headCPUs: 2) { cluster in
            _ = try await cluster.waitForNodes(1)
            func config(ms: Int, handler: String = "sleep") -> String {
                """
                applications:
                  - name: app
                    route_prefix: /app
                    deployments:
                      - name: D
                        handler: \(handler)
                        num_replicas: 2
                        user_config: {ms: \(ms)}
                        ray_actor_options: {num_cpus: 0.5}
                """
            }
            try await cluster.deploy(config(ms: 1))
            let before = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 2)
            let ids = Set(before["applications"]?["app"]?["deployments"]?["D"]?["replicas"]?.arrayValue?.compactMap { $0["replica_id"]?.stringValue } ?? [])
            try await cluster.deploy(config(ms: 7))
            let deadline = ContinuousClock.now + .seconds(20)
            var answer = ""
            while ContinuousClock.now < deadline {
                (_, answer, _) = try await cluster.get("/app")
                if answer.contains("slept 7.0 ms") { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(answer.contains("slept 7.0 ms"), "\(answer)")
            let after = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 2)
            let sameIDs = Set(after["applications"]?["app"]?["deployments"]?["D"]?["replicas"]?.arrayValue?.compactMap { $0["replica_id"]?.stringValue } ?? [])
            #expect(sameIDs == ids, "user_config must not restart replicas")

            try await cluster.deploy(config(ms: 7, handler: "echo"))
            let replaced = ContinuousClock.now + .seconds(30)
            var newIDs: Set<String> = []
            while ContinuousClock.now < replaced {
                let status = try await cluster.status()
                let replicas = status["applications"]?["app"]?["deployments"]?["D"]?["replicas"]?.arrayValue ?? []
                newIDs = Set(replicas.compactMap { $0["replica_id"]?.stringValue })
                if newIDs.isDisjoint(with: ids) && replicas.count == 2 && replicas.allSatisfy({ $0["state"]?.stringValue == "RUNNING" }) { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(newIDs.isDisjoint(with: ids) && newIDs.count == 2, "\(newIDs) vs \(ids)")
            let (_, echoed, _) = try await cluster.get("/app/path")
            #expect(echoed == "/path")
        }
    }

    @Test("replicas on a worker that dies are started again on another")
    func workerDies() async throws {
        try await withCluster { cluster in
            let doomed = try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - name: Hello
                        handler: echo
                        num_replicas: 2
                """)
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2)
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(2)
            doomed.signal(SIGKILL)
            // Until the head has noticed, its status still shows the dead node's replicas running.
            try await FailureTests.eventually("the killed worker is DEAD", timeout: .seconds(30), cluster) {
                let (_, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
                return (try JSONValue.parse(body))["nodes"]?.arrayValue?.contains { $0["state"]?.stringValue == "DEAD" } == true
            }
            let status = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2)
            let nodes = Set(status["applications"]?["hello"]?["deployments"]?["Hello"]?["replicas"]?.arrayValue?.compactMap { $0["node_id"]?.stringValue } ?? [])
            #expect(nodes.count == 1)
            let (code, body, _) = try await cluster.get("/hello/again")
            guard code == 200 && body == "/again" else { throw HarnessFailure("GET /hello/again answered \(code) \(body)") }
            let (_, nodesBody) = try await cluster.adminCall(.get, "/api/cluster/nodes")
            let states = (try JSONValue.parse(nodesBody))["nodes"]?.arrayValue?.compactMap { $0["state"]?.stringValue } ?? []
            #expect(states.sorted() == ["ALIVE", "DEAD"])
        }
    }

    @Test("a worker that loses the head keeps retrying and registers with a head started again")
    func workerReconnects() async throws {
        let token = "reconnect-token"
        let stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-reconnect-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: stateDirectory) }
        func startHead(port: Int) throws -> Child {
            try Child("serve-head", [
                "--port", String(port), "--host", "127.0.0.1", "--http-port", "0", "--http-host", "127.0.0.1", "--admin-port", "0",
                "--num-cpus", "0", "--token", token, "--state-dir", stateDirectory.path,
            ])
        }
        let first = try startHead(port: 0)
        let banner = try await first.waitForOutput(matching: "admin API")
        let clusterPort = try #require(banner.firstMatch(of: /cluster port\s+[\d.]+:(\d+)/).flatMap { Int($0.1) })
        let worker = try Child("serve-worker", [
            "--address", "127.0.0.1:\(clusterPort)", "--num-cpus", "1", "--num-gpus", "0", "--listen-host", "127.0.0.1",
            "--token", token, "--node-id", "steady-worker",
        ])
        _ = try await first.waitForOutput(matching: "node joined: steady-worker")
        first.signal(SIGKILL)
        _ = try await first.waitForExit()
        _ = try await worker.waitForOutput(matching: "cannot reach the head")
        // The same port is free again at once (SO_REUSEADDR), as a restarted head needs.
        let second = try startHead(port: clusterPort)
        let output = try await second.waitForOutput(matching: "node joined: steady-worker", timeout: .seconds(30))
        #expect(output.contains("steady-worker"))
        #expect(worker.process.isRunning)
        worker.signal(SIGTERM)
        #expect(try await worker.waitForExit() == 0, "\(worker.output)")
        second.signal(SIGTERM)
        _ = try await second.waitForExit()
    }
}
