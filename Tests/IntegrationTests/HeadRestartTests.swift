import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

/// DESIGN.md "the state dir": a head restarted on it serves the same applications, and workers
/// that reconnect keep their running replicas.
@Suite("Head restart and state dir", .serialized)
struct HeadRestartTests {
    static let helloConfig = """
        applications:
          - name: hello
            route_prefix: /hello
            deployments:
              - name: Hello
                handler: env
                num_replicas: 2
        """

    private func replicaIDs(_ status: JSONValue, _ app: String, _ deployment: String) -> Set<String> {
        Set(status["applications"]?[app]?["deployments"]?[deployment]?["replicas"]?.arrayValue?.compactMap { $0["replica_id"]?.stringValue } ?? [])
    }

    private func occurrences(of text: String, in output: String) -> Int {
        output.components(separatedBy: text).count - 1
    }

    @Test("SIGKILL the head: started again on its state dir it serves the same apps, adopting the worker's replicas (same ids, no restart); deleting the app clears what is kept")
    func killAndRestart() async throws {
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 2, extra: ["--node-id", "keeper"])
            let nodes = try await cluster.waitForNodes(1)
            try await cluster.deploy(Self.helloConfig)
            let before = self.replicaIDs(try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2), "hello", "Hello")
            let (code, body, _) = try await cluster.get("/hello")
            #expect(code == 200)
            #expect(before.contains((try JSONValue.parse(body))["replica_id"]?.stringValue ?? "?"))
            #expect(self.occurrences(of: "replica running", in: worker.output) == 2)
            // A second worker with room: a restarted head that did not wait for the first one to
            // come back would start replacements here.
            let spare = try await cluster.addWorker(cpus: 2, extra: ["--node-id", "spare"])
            _ = try await cluster.waitForNodes(2)
            let address = try #require(nodes.first?["address"]?.stringValue)
            let workerPort = try #require(address.split(separator: ":").last.flatMap { Int($0) })

            try await cluster.killHead()

            // While the head is away, the worker's replicas keep running: its data plane still
            // answers (with the cluster token), and it keeps trying to reach the head.
            let direct = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: workerPort)
            for id in before {
                let response = try await direct.send(HTTPRequest(
                    method: .get, scheme: "http", authority: "worker", path: "/direct",
                    headerFields: [ServeHeaders.token: cluster.token, ServeHeaders.replica: id]))
                let answer = String(buffer: try await response.body.collect(upTo: 1 << 20))
                #expect(response.head.status == .ok)
                #expect((try JSONValue.parse(answer))["replica_id"]?.stringValue == id)
            }
            await direct.close()
            _ = try await worker.waitForOutput(matching: "cannot reach the head")

            try await cluster.restartHead()
            #expect(cluster.head.output.contains("restored hello from the state dir"))
            _ = try await cluster.head.waitForOutput(matching: "node joined: keeper")
            let after = self.replicaIDs(try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 2), "hello", "Hello")
            #expect(after == before, "the restarted head should adopt the running replicas")
            #expect(self.occurrences(of: "replica running", in: worker.output) == 2, "no replica was started again:\n\(worker.output)")
            _ = try await cluster.head.waitForOutput(matching: "node joined: spare")
            #expect(!spare.output.contains("replica running"), "no replacement was started:\n\(spare.output)")
            for _ in 0..<4 {
                let (code, body, _) = try await cluster.get("/hello")
                #expect(code == 200)
                #expect(before.contains((try JSONValue.parse(body))["replica_id"]?.stringValue ?? "?"))
            }

            // The reconnected workers report new replicas as before: scaling up reaches RUNNING.
            try await cluster.deploy(Self.helloConfig.replacingOccurrences(of: "num_replicas: 2", with: "num_replicas: 3"))
            let scaled = self.replicaIDs(try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 3), "hello", "Hello")
            #expect(scaled.isSuperset(of: before))

            // Deleting the application clears the kept config: the next head starts empty.
            let (deleted, _) = try await cluster.adminCall(.delete, "/api/serve/applications/hello")
            #expect(deleted == 200)
            try await cluster.killHead()
            try await cluster.restartHead()
            #expect(!cluster.head.output.contains("restored"))
            let status = try await cluster.status()
            #expect(status["applications"]?.objectValue?.isEmpty == true, "\(status.jsonString())")
            // The worker's leftover replicas are not part of the config: they are stopped.
            let deadline = ContinuousClock.now + .seconds(30)
            var nodesBody = ""
            repeat {
                nodesBody = try await cluster.adminCall(.get, "/api/cluster/nodes").1
                if nodesBody.contains("keeper") && !nodesBody.contains("Hello#") { break }
                try await Task.sleep(for: .milliseconds(100))
            } while ContinuousClock.now < deadline
            #expect(nodesBody.contains("keeper") && !nodesBody.contains("Hello#"), "\(nodesBody)")
            let (gone, _, _) = try await cluster.get("/hello")
            #expect(gone == 404)
        }
    }

    @Test("an autoscaled deployment keeps the replicas its worker still runs after a head restart, not its initial count")
    func autoscaledKeepsReplicas() async throws {
        try await withCluster { cluster in
            let worker = try await cluster.addWorker(cpus: 4, extra: ["--node-id", "keeper"])
            _ = try await cluster.waitForNodes(1)
            func config(initial: Int) -> String {
                """
                applications:
                  - name: auto
                    route_prefix: /auto
                    deployments:
                      - name: Auto
                        handler: echo
                        autoscaling_config: {min_replicas: 1, initial_replicas: \(initial), max_replicas: 4, downscale_delay_s: 600}
                """
            }
            try await cluster.deploy(config(initial: 3))
            let before = self.replicaIDs(try await cluster.waitForRunning(app: "auto", deployment: "Auto", replicas: 3), "auto", "Auto")
            // An autoscaled target keeps its size through a redeploy; the kept config now says 1.
            try await cluster.deploy(config(initial: 1))
            #expect(self.replicaIDs(try await cluster.waitForRunning(app: "auto", deployment: "Auto", replicas: 3), "auto", "Auto") == before)

            try await cluster.killHead()
            try await cluster.restartHead()
            _ = try await cluster.head.waitForOutput(matching: "kept the 3 replicas workers still ran after a head restart")
            let status = try await cluster.waitForRunning(app: "auto", deployment: "Auto", replicas: 3)
            #expect(self.replicaIDs(status, "auto", "Auto") == before)
            #expect(status["applications"]?["auto"]?["deployments"]?["Auto"]?["target_replicas"]?.doubleValue == 3)
            #expect(self.occurrences(of: "replica running", in: worker.output) == 3)
        }
    }

    @Test("an interrupted state-dir write never corrupts the live config; a second head on the dir, or a damaged config, is refused")
    func interruptedWrites() async throws {
        try await withCluster(headCPUs: 1, headArguments: ["--reconnect-grace-s", "0"]) { cluster in
            try await cluster.deploy("""
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments: [{name: Hello, handler: echo}]
                """)
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
            let configURL = cluster.stateDirectory.appendingPathComponent("config.json")
            let saved = try Data(contentsOf: configURL)
            try await cluster.killHead()

            // What a crash in the middle of a write leaves: a temporary file cut short, and one
            // written whole but never renamed over the config.
            let cut = cluster.stateDirectory.appendingPathComponent(".config.json.tmp-41-1")
            let unrenamed = cluster.stateDirectory.appendingPathComponent(".config.json.tmp-42-2")
            try saved.prefix(saved.count / 2).write(to: cut)
            try Data(#"{"applications": [{"name": "intruder", "deployments": [{"name": "I", "handler": "echo"}]}]}"#.utf8).write(to: unrenamed)

            try await cluster.restartHead()
            #expect(cluster.head.output.contains("restored hello from the state dir"))
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
            let (code, body, _) = try await cluster.get("/hello/again")
            #expect(code == 200 && body == "/again")
            #expect(try await cluster.status()["applications"]?["intruder"] == nil)
            #expect(!FileManager.default.fileExists(atPath: cut.path) && !FileManager.default.fileExists(atPath: unrenamed.path))
            #expect(try Data(contentsOf: configURL) == saved)

            // A second head on the same dir would overwrite the first one's config: refused.
            let second = try Child("serve-head", [
                "--port", "0", "--http-port", "0", "--admin-port", "0", "--host", "127.0.0.1", "--http-host", "127.0.0.1",
                "--num-cpus", "0", "--token", cluster.token, "--state-dir", cluster.stateDirectory.path,
            ])
            #expect(try await second.waitForExit() != 0)
            #expect(second.output.contains("another serve-head is using the state dir"), "\(second.output)")

            // A config damaged by something other than a head (a head's writes are atomic) stops
            // the next head from starting, and is left as it is for the operator to look at.
            try await cluster.killHead()
            let damaged = Data(#"{"applications": [{"name": "hel"#.utf8)
            try damaged.write(to: configURL)
            let refused = try Child("serve-head", [
                "--port", "0", "--http-port", "0", "--admin-port", "0", "--host", "127.0.0.1", "--http-host", "127.0.0.1",
                "--num-cpus", "0", "--token", cluster.token, "--state-dir", cluster.stateDirectory.path,
            ])
            #expect(try await refused.waitForExit() != 0)
            #expect(refused.output.contains(configURL.path) && refused.output.contains("Move it away"), "\(refused.output)")
            #expect(try Data(contentsOf: configURL) == damaged)
        }
    }

    @Test("a head that made its own token keeps it in the state dir: workers with it join the restarted head")
    func keptToken() async throws {
        let stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-token-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: stateDirectory) }
        let arguments = [
            "--port", "0", "--http-port", "0", "--admin-port", "0", "--host", "127.0.0.1", "--http-host", "127.0.0.1",
            "--num-cpus", "0", "--state-dir", stateDirectory.path,
        ]
        let first = try Child("serve-head", arguments)
        let banner = try await first.waitForOutput(matching: "  state dir ")
        let token = try #require(banner.firstMatch(of: /token\s+([0-9a-f]{64})/).map { String($0.1) })
        let file = stateDirectory.appendingPathComponent("token")
        #expect(try String(contentsOf: file, encoding: .utf8) == token)
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        first.signal(SIGKILL)
        _ = try await first.waitForExit()
        let second = try Child("serve-head", arguments)
        let again = try await second.waitForOutput(matching: "  state dir ")
        #expect(again.contains("token         \(token)"))
        let clusterPort = try #require(again.firstMatch(of: /cluster port\s+[\d.]+:(\d+)/).flatMap { Int($0.1) })
        let worker = try Child("serve-worker", [
            "--address", "127.0.0.1:\(clusterPort)", "--num-cpus", "1", "--num-gpus", "0", "--listen-host", "127.0.0.1",
            "--token", token,
        ])
        _ = try await second.waitForOutput(matching: "node joined")
        worker.signal(SIGTERM)
        #expect(try await worker.waitForExit() == 0)
        second.signal(SIGTERM)
        _ = try await second.waitForExit()
    }
}
