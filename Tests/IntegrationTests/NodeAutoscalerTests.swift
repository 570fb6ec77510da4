import Foundation
import ServeCore
import Testing

/// The node autoscaler with real binaries: a head started with `--cluster-config` launches and
/// terminates real `serve-worker` processes through the local and the command providers.
@Suite("Node autoscaler", .serialized)
struct NodeAutoscalerTests {
    /// A head with no CPUs of its own and this cluster config; prints every log (the head's
    /// and its launched workers') if `body` throws.
    func withAutoscaledCluster(
        _ clusterYAML: String,
        environment: [String: String] = [:],
        _ body: (TestCluster) async throws -> Void
    ) async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("cluster-\(UUID().uuidString).yaml")
        try clusterYAML.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let cluster = try await TestCluster(headArguments: ["--cluster-config", file.path], headEnvironment: environment)
        do {
            try await body(cluster)
        } catch {
            print(cluster.logs)
            print(self.launchedLogs(cluster))
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    func launchedLogs(_ cluster: TestCluster) -> String {
        let directory = cluster.stateDirectory.appendingPathComponent("local-nodes")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return files.sorted().map { name in
            "--- launched \(name) ---\n" + ((try? String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)) ?? "")
        }.joined(separator: "\n")
    }

    func nodes(_ cluster: TestCluster) async throws -> JSONValue {
        let (status, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
        guard status == 200 else { throw HarnessFailure("GET /api/cluster/nodes answered \(status): \(body)") }
        return try JSONValue.parse(body)
    }

    /// The node autoscaler's events: (time, reason).
    func events(_ cluster: TestCluster) async throws -> [(time: Double, reason: String)] {
        let (_, body) = try await cluster.adminCall(.get, "/api/serve/events")
        return (try JSONValue.parse(body)["events"]?.arrayValue ?? [])
            .filter { $0["kind"]?.stringValue == "node_autoscale" }
            .map { ($0["time"]?.doubleValue ?? 0, $0["reason"]?.stringValue ?? "") }
    }

    /// Polls `condition` until it holds or `timeout` passes (then fails with `what` and the last
    /// value seen).
    @discardableResult
    func waitFor<T>(
        _ what: String, timeout: Duration = .seconds(60), _ condition: () async throws -> (Bool, T)
    ) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        var last: T
        repeat {
            let (done, value) = try await condition()
            last = value
            if done { return value }
            try await Task.sleep(for: .milliseconds(100))
        } while ContinuousClock.now < deadline
        throw HarnessFailure("timed out waiting for \(what); last seen: \(last)")
    }

    /// Processes whose command line contains `text` (a launched node's id).
    func processes(containing text: String) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.filter { $0.allSatisfy(\.isNumber) }.compactMap { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            guard line.contains(text), !line.contains("/proc") else { return nil }
            // A zombie has exited; only its parent has not collected it yet.
            let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            return stat.contains(") Z ") ? nil : "\(pid): \(line)"
        }
    }

    /// The nodes JSON once the autoscaler has seen its launches join (on its pass after the
    /// registration, within a second).
    func waitForJoins(_ cluster: TestCluster) async throws -> JSONValue {
        try await self.waitFor("the autoscaler to see its launches joined", timeout: .seconds(10)) {
            let nodes = try await self.nodes(cluster)
            return (nodes["node_autoscaler"]?["launches_in_flight"]?.arrayValue?.isEmpty == true, nodes)
        }
    }

    /// Runs a command to its end and returns its status and stdout. posix_spawn and waitpid
    /// rather than Foundation's Process, which on Linux judges a child's exit by a socket the
    /// child inherits: a script that leaves a worker running in the background would never end.
    func spawn(_ argv: [String], environment: [String: String]) async throws -> (Int32, String) {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("spawn-\(UUID().uuidString).out")
        defer { try? FileManager.default.removeItem(at: output) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let cArguments = argv.map { strdup($0) } + [nil]
        let merged = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let cEnvironment = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in cArguments { free(pointer) }
            for pointer in cEnvironment { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, argv[0], &actions, nil, cArguments, cEnvironment)
        guard result == 0 else { throw HarnessFailure("could not start \(argv[0]): \(String(cString: strerror(result)))") }
        var status: Int32 = 0
        let deadline = ContinuousClock.now + .seconds(30)
        while waitpid(pid, &status, WNOHANG) == 0 {
            guard ContinuousClock.now < deadline else {
                kill(pid, SIGKILL)
                throw HarnessFailure("\(argv) did not finish")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, (try? String(contentsOf: output, encoding: .utf8)) ?? "")
    }

    /// Deploys app `app` (route /app) with one echo deployment `D`.
    func deployEchoApp(_ cluster: TestCluster, replicas: Int? = nil, numCPUs: Double? = nil) async throws {
        var config = """
            applications:
              - name: app
                route_prefix: /app
                deployments:
                  - name: D
                    handler: echo

            """
        if let replicas { config += "        num_replicas: \(replicas)\n" }
        if let numCPUs { config += "        ray_actor_options: {num_cpus: \(numCPUs)}\n" }
        try await cluster.deploy(config)
    }

    func workerNodes(_ nodes: JSONValue) -> [JSONValue] {
        (nodes["nodes"]?.arrayValue ?? []).filter { $0["node_type"]?.stringValue != "head" }
    }

    @Test("5 replicas × 1 CPU with a 2-CPU node type (max 3): 3 workers launched, all 5 run; deleting the app terminates all 3 after idle_timeout_s")
    func localProviderScalesUpAndDown() async throws {
        let config = """
            provider: {type: local}
            idle_timeout_s: 2
            node_types:
              cpu2: {resources: {CPU: 2}, max_workers: 3}
            """
        try await self.withAutoscaledCluster(config) { cluster in
            try await self.deployEchoApp(cluster, replicas: 5, numCPUs: 1)
            _ = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 5, timeout: .seconds(90))
            let nodes = try await self.waitForJoins(cluster)
            let workers = self.workerNodes(nodes).filter { $0["state"]?.stringValue == "ALIVE" }
            #expect(workers.count == 3, "\(nodes.jsonString())")
            #expect(workers.allSatisfy { $0["node_type"]?.stringValue == "cpu2" && $0["launch_state"]?.stringValue == "JOINED" })
            #expect(workers.map { $0["replicas"]?.arrayValue?.count ?? 0 }.sorted() == [1, 2, 2])
            #expect(nodes["node_autoscaler"]?["provider"]?.stringValue == "local")
            let launches = try await self.events(cluster).filter { $0.reason.hasPrefix("launching") }
            #expect(launches.count == 1, "\(launches)")
            #expect(launches.first?.reason.hasPrefix("launching 3 × cpu2") == true)
            for _ in 0..<5 {
                let (code, body, _) = try await cluster.get("/app/ping")
                #expect(code == 200 && body == "/ping")
            }
            let ids = workers.compactMap { $0["node_id"]?.stringValue }
            #expect(ids.allSatisfy { !self.processes(containing: $0).isEmpty })

            let (deleted, _) = try await cluster.adminCall(.delete, "/api/serve/applications/app")
            #expect(deleted == 200)
            let deletedAt = Date().timeIntervalSince1970
            try await self.waitFor("the 3 launched nodes to be terminated", timeout: .seconds(30)) {
                let nodes = try await self.nodes(cluster)
                let dead = self.workerNodes(nodes).filter { $0["state"]?.stringValue == "DEAD" }.count
                let managed = nodes["node_autoscaler"]?["managed_nodes"]?.arrayValue?.count ?? -1
                return (dead == 3 && managed == 0, nodes.jsonString())
            }
            let terminations = try await self.events(cluster).filter { $0.reason.hasPrefix("terminating") }
            #expect(terminations.count == 3, "\(terminations)")
            #expect(terminations.allSatisfy { $0.reason.contains("idle for") && $0.time - deletedAt >= 2 - 0.2 }, "\(terminations)")
            try await self.waitFor("the worker processes to exit", timeout: .seconds(15)) {
                let left = ids.flatMap { self.processes(containing: $0) }
                return (left.isEmpty, left)
            }
        }
    }

    @Test("a GPU deployment with a GPU node type launches only that type; a demand no type can hold is reported once as infeasible")
    func gpuTypeAndInfeasible() async throws {
        let config = """
            provider: {type: local}
            idle_timeout_s: 60
            node_types:
              cpu2: {resources: {CPU: 2}, max_workers: 2}
              gpu: {resources: {CPU: 4, GPU: 1, "accelerator_type:A100": 1}, max_workers: 1}
            """
        try await self.withAutoscaledCluster(config) { cluster in
            try await cluster.deploy(
                """
                applications:
                  - name: g
                    route_prefix: /g
                    deployments:
                      - name: D
                        handler: env
                        ray_actor_options: {num_cpus: 1, num_gpus: 1, accelerator_type: A100}
                  - name: big
                    route_prefix: /big
                    deployments:
                      - name: B
                        handler: echo
                        ray_actor_options: {num_gpus: 2}
                """)
            try await self.waitFor("g/D to run") {
                let status = try await cluster.status()
                let replicas = status["applications"]?["g"]?["deployments"]?["D"]?["replicas"]?.arrayValue ?? []
                return (replicas.count == 1 && replicas[0]["state"]?.stringValue == "RUNNING", status.jsonString())
            }
            let nodes = try await self.waitForJoins(cluster)
            let workers = self.workerNodes(nodes)
            #expect(workers.map { $0["node_type"]?.stringValue } == ["gpu"], "\(nodes.jsonString())")
            #expect(workers.first?["resources_total"]?["GPU"]?.doubleValue == 1)
            let (code, body, _) = try await cluster.get("/g")
            #expect(code == 200)
            #expect(try JSONValue.parse(body)["CUDA_VISIBLE_DEVICES"]?.stringValue == "0", "\(body)")

            let infeasible = nodes["node_autoscaler"]?["infeasible_demands"]?.arrayValue ?? []
            #expect(infeasible.count == 1)
            #expect(infeasible.first?["deployment"]?.stringValue == "big/B")
            #expect(infeasible.first?["reason"]?.stringValue?.contains("no node type can hold it") == true, "\(infeasible)")
            let events = try await self.events(cluster)
            #expect(events.filter { $0.reason.hasPrefix("infeasible:") }.count == 1, "\(events)")
            #expect(!events.contains { $0.reason.contains("× cpu2") }, "\(events)")

            // `serve status` shows the same, for a person and as JSON.
            let address = "http://127.0.0.1:\(cluster.adminPort)"
            let human = try Child("serve", ["status", "--address", address])
            #expect(try await human.waitForExit() == 0)
            #expect(human.output.contains("node autoscaler (local provider, idle_timeout_s 60)"), "\(human.output)")
            #expect(human.output.contains("  gpu  1 node(s), 0 launching, 0 draining  (min 0, max 1; CPU: 4, GPU: 1, accelerator_type:A100: 1)"), "\(human.output)")
            #expect(human.output.contains("! infeasible: 1 × big/B (CPU: 1, GPU: 2): no node type can hold it"), "\(human.output)")
            let json = try Child("serve", ["status", "--json", "--address", address])
            #expect(try await json.waitForExit() == 0)
            let parsed = try JSONValue.parse(json.output)
            #expect(parsed["applications"]?["g"] != nil)
            #expect(parsed["node_autoscaler"]?["infeasible_demands"]?.arrayValue?.count == 1, "\(json.output)")
        }
    }

    @Test("the command provider: the example scripts in deploy/command-provider launch, list and terminate real workers")
    func commandProvider() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-provider-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = """
            provider:
              type: command
              launch: deploy/command-provider/launch.sh
              terminate: deploy/command-provider/terminate.sh
              list: deploy/command-provider/list.sh
              timeout_s: 20
            idle_timeout_s: 2
            node_types:
              cpu2: {resources: {CPU: 2}, max_workers: 2}
            """
        let environment = ["SERVE_PROVIDER_DIR": directory.path, "SERVE_WORKER_BIN": try builtBinary("serve-worker").path]
        try await self.withAutoscaledCluster(config, environment: environment) { cluster in
            try await self.deployEchoApp(cluster, replicas: 3)
            _ = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 3, timeout: .seconds(90))
            let nodes = try await self.nodes(cluster)
            let workers = self.workerNodes(nodes)
            #expect(workers.count == 2, "\(nodes.jsonString())")
            #expect(nodes["node_autoscaler"]?["provider"]?.stringValue == "command")
            let ids = workers.compactMap { $0["node_id"]?.stringValue }
            for id in ids {
                #expect(FileManager.default.fileExists(atPath: directory.appendingPathComponent("\(id).pid").path))
            }
            let (deleted, _) = try await cluster.adminCall(.delete, "/api/serve/applications/")
            #expect(deleted == 200)
            try await self.waitFor("the command provider's nodes to be terminated", timeout: .seconds(30)) {
                let nodes = try await self.nodes(cluster)
                let dead = self.workerNodes(nodes).filter { $0["state"]?.stringValue == "DEAD" }.count
                let pids = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".pid") }
                return (dead == 2 && pids.isEmpty, "\(pids) \(nodes.jsonString())")
            }
            try await self.waitFor("the workers to exit", timeout: .seconds(15)) {
                let left = ids.flatMap { self.processes(containing: $0) }
                return (left.isEmpty, left)
            }
        }
    }

    @Test("a launched worker that dies before joining is replaced, and the failure is an event")
    func diesBeforeJoiningIsReplaced() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-flaky-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // The first worker it starts exits at once; later ones are real.
        let wrapper = directory.appendingPathComponent("flaky-worker")
        try """
            #!/bin/sh
            if [ ! -e "\(directory.path)/failed-once" ]; then
                touch "\(directory.path)/failed-once"
                echo "dying before joining, on purpose" >&2
                exit 3
            fi
            exec "\(try builtBinary("serve-worker").path)" "$@"
            """.write(to: wrapper, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: wrapper.path)
        let config = """
            provider: {type: local, worker_path: \(wrapper.path)}
            node_types:
              cpu2: {resources: {CPU: 2}, max_workers: 1}
            """
        try await self.withAutoscaledCluster(config) { cluster in
            try await self.deployEchoApp(cluster)
            let status = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 1, timeout: .seconds(60))
            let events = try await self.events(cluster)
            let launches = events.filter { $0.reason.hasPrefix("launching 1 × cpu2") }
            #expect(launches.count == 2, "\(events)")
            let failure = events.first { $0.reason.contains("exited before joining; launching a replacement in 1 s") }
            #expect(failure != nil, "\(events)")
            // The replica runs on the second node.
            let node = status["applications"]?["app"]?["deployments"]?["D"]?["replicas"]?.arrayValue?.first?["node_id"]?.stringValue
            let firstID = launches.first?.reason.firstMatch(of: /\((cpu2-[^)]+)\)/).map { String($0.1) }
            #expect(node != nil && node != firstID, "replica on \(node ?? "-"), first launch \(firstID ?? "-")")
            #expect(failure.map { $0.reason.contains(firstID ?? "?") } == true)
        }
    }

    @Test("a launch that never joins is terminated at launch_timeout_s and retried with a growing backoff")
    func neverJoins() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-nojoin-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // A provider whose machines never come up: it records launches and lists them as
        // running, but starts nothing.
        let scripts = [
            "launch.sh": #"type=$1; shift 2; for id in "$@"; do echo "$id $type" >> "$DIR/nodes"; done"#,
            "list.sh": #"printf '{"nodes": ['; sep=; while read -r id type; do printf '%s{"node_id": "%s", "node_type": "%s"}' "$sep" "$id" "$type"; sep=,; done < "$DIR/nodes"; printf ']}'"#,
            "terminate.sh": #"for id in "$@"; do grep -v "^$id " "$DIR/nodes" > "$DIR/nodes.new" || true; mv "$DIR/nodes.new" "$DIR/nodes"; echo "$id" >> "$DIR/terminated"; done"#,
        ]
        for (name, body) in scripts {
            try "DIR=\(directory.path)\n\(body)\n".write(to: directory.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        _ = FileManager.default.createFile(atPath: directory.appendingPathComponent("nodes").path, contents: nil)
        let config = """
            provider:
              type: command
              launch: [/bin/sh, \(directory.path)/launch.sh]
              terminate: [/bin/sh, \(directory.path)/terminate.sh]
              list: [/bin/sh, \(directory.path)/list.sh]
            launch_timeout_s: 1
            node_types:
              cpu2: {resources: {CPU: 2}, max_workers: 1}
            """
        try await self.withAutoscaledCluster(config) { cluster in
            try await self.deployEchoApp(cluster)
            let events = try await self.waitFor("two launches to time out", timeout: .seconds(30)) {
                let events = try await self.events(cluster)
                return (events.filter { $0.reason.contains("did not join within launch_timeout_s 1 s") }.count >= 2, events)
            }
            let timeouts = events.filter { $0.reason.contains("did not join") }
            #expect(timeouts[0].reason.hasSuffix("a replacement follows in 1 s"), "\(timeouts)")
            #expect(timeouts[1].reason.hasSuffix("a replacement follows in 2 s"), "\(timeouts)")
            let launches = events.filter { $0.reason.hasPrefix("launching 1 × cpu2") }
            #expect(launches.count >= 2)
            // The retry came after the backoff, not at once.
            #expect(launches[1].time - timeouts[0].time >= 1 - 0.2, "\(events)")
            // Each timed-out launch is terminated after its event is recorded (the provider's
            // command runs then): wait for the second one's.
            _ = try await self.waitFor("both timed-out launches to be terminated", timeout: .seconds(10)) {
                let terminated = (try? String(contentsOf: directory.appendingPathComponent("terminated"), encoding: .utf8)) ?? ""
                return (terminated.split(separator: "\n").count >= 2, terminated)
            }
            // Never more than max_workers at a time.
            let nodes = try String(contentsOf: directory.appendingPathComponent("nodes"), encoding: .utf8)
            #expect(nodes.split(separator: "\n").count <= 1, "\(nodes)")
        }
    }

    @Test("the example launch script is idempotent per node id, and list and terminate agree with it")
    func exampleScriptsAreIdempotent() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-scripts-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let environment = [
            "SERVE_PROVIDER_DIR": directory.path, "SERVE_WORKER_BIN": try builtBinary("serve-worker").path,
            "SERVE_TOKEN": "t", "SERVE_WORKER_FLAGS": "--address 127.0.0.1:9 --node-type cpu2 --num-cpus 2 --num-gpus 0",
        ]
        func run(_ script: String, _ arguments: [String]) async throws -> String {
            let (status, output) = try await self.spawn(
                [packageRoot.appendingPathComponent("deploy/command-provider/\(script)").path] + arguments, environment: environment)
            #expect(status == 0, "\(script) \(arguments)")
            return output
        }
        let id = "cpu2-test-\(UInt16.random(in: 0...UInt16.max))"
        let first = try await run("launch.sh", ["cpu2", "1", id])
        let second = try await run("launch.sh", ["cpu2", "1", id])
        #expect(first == second)
        #expect(try JSONValue.parse(first)["nodes"]?.arrayValue?.first?["node_id"]?.stringValue == id)
        #expect(self.processes(containing: id).count == 1, "\(self.processes(containing: id))")
        let listed = try JSONValue.parse(try await run("list.sh", []))
        #expect(listed["nodes"]?.arrayValue?.map { $0["node_type"]?.stringValue } == ["cpu2"])
        _ = try await run("terminate.sh", [id])
        _ = try await run("terminate.sh", [id])  // again: already gone, not an error
        #expect(try JSONValue.parse(try await run("list.sh", []))["nodes"]?.arrayValue?.isEmpty == true)
        try await self.waitFor("the worker to exit", timeout: .seconds(15)) {
            let left = self.processes(containing: id)
            return (left.isEmpty, left)
        }
    }
}
