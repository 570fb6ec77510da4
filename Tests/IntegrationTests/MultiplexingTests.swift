import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import Serve
import ServeCore
import ServeWire
import Testing

/// Batching and multiplexing (issue 17) with the real binaries: models routed to the replicas
/// that hold them, caches that never exceed their bound, process replicas that get the header,
/// handles that pass a model on, batches through the proxy, and the config warning.
@Suite("Batching and multiplexing", .serialized)
struct MultiplexingTests {
    static let config = """
        applications:
          - name: models
            route_prefix: /models
            deployments:
              - name: Models
                handler: multiplexed
                num_replicas: 4
                max_ongoing_requests: 16
                user_config: {max_num_models_per_replica: 3, load_ms: 50}
                ray_actor_options: {num_cpus: 0.25}
          - name: front
            route_prefix: /front
            ingress: Front
            deployments:
              - name: Front
                handler: compose
                user_config: {relay: Models, app: models}
                max_ongoing_requests: 100
                ray_actor_options: {num_cpus: 0.25}
        """

    /// One request for `model` through `pool`: its status and JSON answer.
    static func ask(_ pool: HTTP1ConnectionPool, _ path: String, model: String) async throws -> (Int, JSONValue) {
        let response = try await pool.send(
            HTTPRequest(
                method: .get, scheme: "http", authority: "127.0.0.1", path: path,
                headerFields: [.serveMultiplexedModelID: model]),
            timeout: .seconds(30))
        let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
        return (response.head.status.code, (try? JSONValue.parse(body)) ?? .string(body))
    }

    /// Each replica's reported model ids, from the status JSON.
    static func held(_ status: JSONValue, app: String, deployment: String) -> [String: [String]] {
        var held: [String: [String]] = [:]
        for replica in status["applications"]?[app]?["deployments"]?[deployment]?["replicas"]?.arrayValue ?? [] {
            guard let id = replica["replica_id"]?.stringValue else { continue }
            held[id] = replica["model_ids"]?.arrayValue?.compactMap(\.stringValue) ?? []
        }
        return held
    }

    @Test(
        "10 models over 4 replicas under a skewed load: every request answered, no replica ever past its cache, most requests hit a held model"
    )
    func skewedLoad() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy(Self.config)
            _ = try await cluster.waitForRunning(app: "models", deployment: "Models", replicas: 4)

            // The status JSON, read all along: no replica ever reports more than its cache.
            let reports = NIOLockedValueBox<(count: Int, over: [String])>((0, []))
            let watching = NIOLockedValueBox(true)
            let watcher = Task {
                while watching.withLockedValue({ $0 }) {
                    let held = Self.held(try await cluster.status(), app: "models", deployment: "Models")
                    reports.withLockedValue { reports in
                        reports.count += 1
                        for (replica, ids) in held where ids.count > 3 { reports.over.append("\(replica): \(ids)") }
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            // Skewed: model k with weight 1/(k+1) (m0 about a third of the load), 8 clients.
            let weights = (0..<10).map { 1.0 / Double($0 + 1) }
            let total = weights.reduce(0, +)
            let answers = try await withThrowingTaskGroup(of: [(String, Int, JSONValue)].self) { group in
                for client in 0..<8 {
                    group.addTask {
                        var generator = SeededGenerator(seed: UInt64(client + 1))
                        var answers: [(String, Int, JSONValue)] = []
                        for _ in 0..<60 {
                            var pick = Double.random(in: 0..<total, using: &generator)
                            var model = 9
                            for (index, weight) in weights.enumerated() {
                                if pick < weight { model = index; break }
                                pick -= weight
                            }
                            let (status, answer) = try await Self.ask(cluster.ingress, "/models", model: "m\(model)")
                            answers.append(("m\(model)", status, answer))
                        }
                        return answers
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            watching.withLockedValue { $0 = false }
            try await watcher.value

            #expect(answers.count == 480)
            let failed = answers.filter { $0.1 != 200 || $0.2["model_id"]?.stringValue != $0.0 }
            #expect(failed.isEmpty, "not answered by their model: \(failed.prefix(5))")
            let overfull = answers.filter { ($0.2["models"]?.arrayValue?.count ?? 0) > 3 }
            #expect(overfull.isEmpty, "a replica held more than 3 models: \(overfull.prefix(3))")
            let (polls, over) = reports.withLockedValue { $0 }
            #expect(polls > 0 && over.isEmpty, "status showed replicas past their cache: \(over.prefix(3))")
            let hits = answers.filter { $0.2["hit"]?.boolValue == true }.count
            // Random routing would find a model held about 3 times in 10 at best; routing to the
            // holders does far better (the first request of each model on a replica must load).
            print("multiplexing: \(hits) of \(answers.count) requests found their model held")
            #expect(Double(hits) / Double(answers.count) > 0.6)

            // The held ids reach the status JSON (and so the route tables) soon after a change:
            // a model not asked for yet, then seen on the replica that answered.
            let (_, fresh) = try await Self.ask(cluster.ingress, "/models", model: "fresh")
            let replica = try #require(fresh["replica_id"]?.stringValue)
            let asked = ContinuousClock.now
            var seenAfter: Duration?
            while ContinuousClock.now - asked < .seconds(5) {
                if Self.held(try await cluster.status(), app: "models", deployment: "Models")[replica]?.contains(
                    "fresh") == true
                {
                    seenAfter = ContinuousClock.now - asked
                    break
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(
                seenAfter != nil && seenAfter! < .milliseconds(500), "reported after \(String(describing: seenAfter))")
            // ... and a handle call passes the model on (compose relays with the option set):
            // it lands where the model is held.
            let (status, relayed) = try await Self.ask(cluster.ingress, "/front", model: "fresh")
            #expect(status == 200 && relayed["replica_id"]?.stringValue == replica && relayed["hit"]?.boolValue == true)
        }
    }

    @Test("a process replica gets the header; routers take it to hold the last models sent to it")
    func processReplicas() async throws {
        let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("examples").path
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: py
                    route_prefix: /py
                    deployments:
                      - name: PyModels
                        command: ["python3", "models.py"]
                        num_replicas: 2
                        user_config: {max_num_models_per_replica: 2}
                        ray_actor_options:
                          num_cpus: 0.25
                          runtime_env: {working_dir: \(examples), env_vars: {LOAD_MS: "20", MAX_MODELS: "2"}}
                """)
            _ = try await cluster.waitForRunning(app: "py", deployment: "PyModels", replicas: 2)
            let models = ["a", "b", "c", "d"]
            var first: [String: Int] = [:]
            for model in models {
                let (status, answer) = try await Self.ask(cluster.ingress, "/py", model: model)
                #expect(status == 200 && answer["model_id"]?.stringValue == model, "\(answer)")
                first[model] = answer["pid"]?.doubleValue.map(Int.init)
            }
            // The node reports what it assumes (two models per replica, four in all) ...
            let deadline = ContinuousClock.now + .seconds(5)
            var held: [String: [String]] = [:]
            while ContinuousClock.now < deadline {
                held = Self.held(try await cluster.status(), app: "py", deployment: "PyModels")
                if held.values.map(\.count).reduce(0, +) == 4 { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(
                held.values.allSatisfy { $0.count == 2 } && Set(held.values.flatMap { $0 }) == Set(models), "\(held)")
            // ... and each model's next requests go to the process that loaded it, and hit.
            for model in models + models {
                let (status, answer) = try await Self.ask(cluster.ingress, "/py", model: model)
                #expect(status == 200 && answer["hit"]?.boolValue == true, "\(model): \(answer)")
                #expect(answer["pid"]?.doubleValue.map(Int.init) == first[model])
            }
        }
    }

    @Test(
        "batches through the proxy: 32 concurrent calls run in batches bigger than one; a batch size over max_ongoing_requests is deployed with a warning"
    )
    func batchingEndToEnd() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            let yaml = """
                applications:
                  - name: batched
                    route_prefix: /batched
                    deployments:
                      - name: Batched
                        handler: batched
                        max_ongoing_requests: 4
                        user_config: {max_batch_size: 16, batch_wait_timeout_s: 0.05}
                        ray_actor_options: {num_cpus: 0.25}
                """
            let (status, body) = try await cluster.adminCall(.put, "/api/serve/applications/", body: yaml)
            #expect(status == 200)
            let warnings = try JSONValue.parse(body)["warnings"]?.arrayValue ?? []
            #expect(
                warnings.first?["path"]?.stringValue == "applications[0].deployments[0].user_config.max_batch_size",
                "\(body)")
            let (_, events) = try await cluster.adminCall(.get, "/api/serve/events")
            #expect(events.contains("config warning: applications[0].deployments[0].user_config.max_batch_size"))
            _ = try await cluster.waitForRunning(app: "batched", deployment: "Batched", replicas: 1)
            // Capped at max_ongoing_requests: batches of at most 4.
            var sizes = try await Self.batchSizes(cluster, calls: 32)
            #expect(sizes.max() ?? 0 <= 4 && sizes.max() ?? 0 > 1, "\(sizes)")
            // Raised without a restart: batches up to 16 now.
            try await cluster.deploy(
                yaml.replacingOccurrences(of: "max_ongoing_requests: 4", with: "max_ongoing_requests: 64"))
            let deadline = ContinuousClock.now + .seconds(10)
            repeat {
                sizes = try await Self.batchSizes(cluster, calls: 32)
            } while sizes.max() ?? 0 <= 4 && ContinuousClock.now < deadline
            #expect(sizes.max() ?? 0 > 4 && sizes.max() ?? 0 <= 16, "\(sizes)")
        }
    }

    /// Sends `calls` requests at once to /batched; the batch sizes they report.
    static func batchSizes(_ cluster: TestCluster, calls: Int) async throws -> [Int] {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<calls {
                group.addTask {
                    let (status, body, _) = try await cluster.get("/batched?item=\(index)")
                    let answer = try JSONValue.parse(body)
                    guard status == 200, answer["item"]?.stringValue == "\(index)" else {
                        throw HarnessFailure("\(status): \(body)")
                    }
                    return answer["batch_size"]?.doubleValue.map(Int.init) ?? 0
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }
}
