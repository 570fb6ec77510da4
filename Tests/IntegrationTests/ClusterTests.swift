import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import ServeCore
import ServeWire
import Testing

/// The real binaries on 127.0.0.1: a head, workers, the ingress, the admin API and the CLI.
@Suite("A working cluster", .serialized)
struct ClusterTests {
    @Test("three env replicas spread over two workers, and all of them serve")
    func replicasSpreadOverWorkers() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: env
                    route_prefix: /env
                    deployments:
                      - name: Env
                        handler: env
                        num_replicas: 3
                        ray_actor_options: {num_cpus: 1}
                """)
            let status = try await cluster.waitForRunning(app: "env", deployment: "Env", replicas: 3)
            let replicas = status["applications"]?["env"]?["deployments"]?["Env"]?["replicas"]?.arrayValue ?? []
            let nodes = Set(replicas.compactMap { $0["node_id"]?.stringValue })
            #expect(nodes.count == 2, "replicas on \(nodes)")

            // Power of two choices spreads even sequential requests over every replica.
            var seen: Set<String> = []
            for _ in 0..<60 {
                let (code, body, _) = try await cluster.get("/env")
                #expect(code == 200)
                let value = try JSONValue.parse(body)
                if let id = value["replica_id"]?.stringValue { seen.insert(id) }
                #expect(value["OMP_NUM_THREADS"]?.stringValue == "1")
                #expect(value["num_cpus"]?.doubleValue == 1)
            }
            #expect(seen == Set(replicas.compactMap { $0["replica_id"]?.stringValue }))

            let (nodesStatus, nodesBody) = try await cluster.adminCall(.get, "/api/cluster/nodes")
            #expect(nodesStatus == 200)
            let listed = try JSONValue.parse(nodesBody)["nodes"]?.arrayValue ?? []
            #expect(!listed.contains { $0["node_type"]?.stringValue == "head" }, "a --num-cpus 0 head hosts nothing")
            let used = listed.map { ($0["resources_total"]?["CPU"]?.doubleValue ?? 0) - ($0["resources_available"]?["CPU"]?.doubleValue ?? 0) }
            #expect(used.reduce(0, +) == 3)
        }
    }

    @Test("scaling 1 → 4 → 1 by redeploy while clients send continuously loses no request")
    func scaleWithoutLoss() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 4)
            try await cluster.addWorker(cpus: 4)
            _ = try await cluster.waitForNodes(2)
            func config(_ replicas: Int) -> String {
                """
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - name: Hello
                        handler: sleep
                        num_replicas: \(replicas)
                        graceful_shutdown_timeout_s: 10
                        user_config: {ms: 5}
                """
            }
            try await cluster.deploy(config(1))
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)

            let failures = NIOLockedValueBox<[String]>([])
            let answered = NIOLockedValueBox(0)
            let sending = NIOLockedValueBox(true)
            let clients = Task {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<4 {
                        group.addTask {
                            while sending.withLockedValue({ $0 }) {
                                do {
                                    let (code, body, _) = try await cluster.get("/hello/x")
                                    if code == 200 {
                                        answered.withLockedValue { $0 += 1 }
                                    } else {
                                        failures.withLockedValue { $0.append("\(code): \(body)") }
                                    }
                                } catch {
                                    failures.withLockedValue { $0.append("\(error)") }
                                }
                            }
                        }
                    }
                }
            }
            // Each step waits for more answers, so requests are in flight across every change
            // however fast or slow the machine is.
            func waitForMoreAnswers(_ count: Int) async throws {
                let target = answered.withLockedValue { $0 } + count
                let deadline = ContinuousClock.now + .seconds(60)
                while answered.withLockedValue({ $0 }) < target && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(10))
                }
                #expect(answered.withLockedValue { $0 } >= target, "the clients stalled")
            }
            try await waitForMoreAnswers(20)
            try await cluster.deploy(config(4))
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 4)
            try await waitForMoreAnswers(20)
            try await cluster.deploy(config(1))
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
            try await waitForMoreAnswers(20)
            sending.withLockedValue { $0 = false }
            await clients.value
            #expect(failures.withLockedValue { $0 }.isEmpty, "failed requests: \(failures.withLockedValue { $0.prefix(5) })")
            let (_, eventsBody) = try await cluster.adminCall(.get, "/api/serve/events")
            let events = try JSONValue.parse(eventsBody)["events"]?.arrayValue ?? []
            let scales = events.filter { $0["kind"]?.stringValue == "scale" }.map { "\(Int($0["before"]?.doubleValue ?? -1))→\(Int($0["after"]?.doubleValue ?? -1))" }
            #expect(scales == ["1→4", "4→1"])
        }
    }

    @Test("a command deployment serves through the ingress with its route prefix stripped")
    func commandDeployment() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: model
                    route_prefix: /model
                    deployments:
                      - name: Model
                        command: ["python3", "model.py"]
                        health_path: /healthz
                        num_replicas: 2
                        ray_actor_options:
                          num_cpus: 0.5
                          runtime_env: {env_vars: {MODEL: tiny}, working_dir: examples}
                """)
            _ = try await cluster.waitForRunning(app: "model", deployment: "Model", replicas: 2)
            let (code, body, _) = try await cluster.get("/model/predict?x=4")
            #expect(code == 200, "\(body)")
            let value = try JSONValue.parse(body)
            #expect(value["path"]?.stringValue == "/predict")
            #expect(value["prefix"]?.stringValue == "/model")
            #expect(value["prediction"]?.doubleValue == 9)
            #expect(value["model"]?.stringValue == "tiny")
            #expect(value["OMP_NUM_THREADS"]?.stringValue == "1")
            let (postCode, postBody) = try await cluster.post("/model/upload", body: String(repeating: "x", count: 100_000))
            #expect(postCode == 200)
            #expect(try JSONValue.parse(postBody)["received_bytes"]?.doubleValue == 100_000)
            // Two replicas are two processes.
            var pids: Set<Double> = []
            for _ in 0..<30 {
                let (_, body, _) = try await cluster.get("/model/p")
                if let pid = try JSONValue.parse(body)["pid"]?.doubleValue { pids.insert(pid) }
            }
            #expect(pids.count == 2)

            // Deleting the app stops the processes (SIGTERM reaches them: the worker's blocked
            // signal mask must not be inherited).
            let (deleted, _) = try await cluster.adminCall(.delete, "/api/serve/applications/model")
            #expect(deleted == 200)
            let deadline = ContinuousClock.now + .seconds(15)
            var alive = pids
            while !alive.isEmpty && ContinuousClock.now < deadline {
                alive = alive.filter { kill(pid_t($0), 0) == 0 && !isZombie(pid_t($0)) }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(alive.isEmpty, "replica processes still running: \(alive)")
        }
    }

    private func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else {
            return true
        }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }

    @Test("a refused config names its fields, changes nothing, and the running app keeps serving")
    func refusedConfig() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - name: Hello
                        handler: echo
                        num_replicas: 1
                """)
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
            let (code, body) = try await cluster.adminCall(.put, "/api/serve/applications/", body: """
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - name: Hello
                        handler: no_such_handler
                        num_replicas: 1
                  - name: other
                    route_prefix: /other
                    deployments:
                      - name: Other
                        handler: echo
                        autoscaling_config: {min_replicas: 3, max_replicas: 2}
                """)
            #expect(code == 400)
            let problems = (try JSONValue.parse(body))["problems"]?.arrayValue?.compactMap { $0["path"]?.stringValue } ?? []
            #expect(problems.contains("applications[0].deployments[0].handler"), "\(problems)")
            #expect(problems.contains("applications[1].deployments[0].autoscaling_config.max_replicas"), "\(problems)")
            let (getCode, getBody, _) = try await cluster.get("/hello/still")
            #expect(getCode == 200)
            #expect(getBody == "/still")
            let status = try await cluster.status()
            #expect(status["applications"]?["other"] == nil)
            #expect(status["applications"]?["hello"]?["deployments"]?["Hello"]?["replicas"]?.arrayValue?.count == 1)
        }
    }

    @Test("serve status prints the tree of apps, deployments and replicas; --json the raw status")
    func serveStatus() async throws {
        try await withCluster(headCPUs: 2) { cluster in
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - name: Hello
                        handler: echo
                        num_replicas: 2
                        ray_actor_options: {num_cpus: 0.5}
                """)
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2)
            let address = "http://127.0.0.1:\(cluster.adminPort)"
            let status = try Child("serve", ["status", "--address", address])
            #expect(try await status.waitForExit() == 0)
            let text = status.output
            #expect(text.contains("hello  RUNNING  /hello"), "\(text)")
            #expect(text.contains("Hello  HEALTHY  2/2 running"), "\(text)")
            #expect(text.components(separatedBy: "RUNNING  node head-").count - 1 == 2, "\(text)")
            let json = try Child("serve", ["status", "--json", "--address", address])
            #expect(try await json.waitForExit() == 0)
            #expect(try JSONValue.parse(json.output)["applications"]?["hello"]?["status"]?.stringValue == "RUNNING")

            let delete = try Child("serve", ["delete", "hello", "--address", address], environment: ["SERVE_TOKEN": cluster.token])
            #expect(try await delete.waitForExit() == 0, "\(delete.output)")
            let (code, _, _) = try await cluster.get("/hello/gone")
            #expect(code == 404)
        }
    }

    @Test("a worker with the wrong token exits non-zero with a clear message")
    func wrongToken() async throws {
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 1, token: "not-the-token")
            let status = try await worker.waitForExit(timeout: .seconds(30))
            #expect(status != 0)
            #expect(worker.output.contains("token"), "\(worker.output)")
        }
    }
}
