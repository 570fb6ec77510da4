import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServeCore
import ServeWire
import Testing

@testable import ServeWorker

/// Children that cannot hold their node hostage (issue 20, item 10): a command replica holds
/// none of its node's descriptors, and dies with its node.
@Suite("Process hygiene", .serialized)
struct ProcessHygieneTests {
    /// The pids of processes whose environment names this replica (its child, whatever it runs).
    static func processes(ofReplica replicaID: String) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry),
                let environ = FileManager.default.contents(atPath: "/proc/\(entry)/environ")
            else { return nil }
            let variables = environ.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard variables.contains("SERVE_REPLICA_ID=\(replicaID)") else { return nil }
            // A zombie waiting for its reaper is gone for every purpose here.
            let stat = (try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8)) ?? ""
            guard let close = stat.lastIndex(of: ")"), !stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
            else { return nil }
            return pid
        }
    }

    /// How many listening TCP sockets the process holds (/proc/net/tcp{,6} and its descriptors).
    static func listeningSockets(of pid: pid_t) -> Int {
        var listening: Set<String> = []
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n").dropFirst() {
                let columns = line.split(separator: " ", omittingEmptySubsequences: true)
                if columns.count > 9 && columns[3] == "0A" { listening.insert("socket:[\(columns[9])]") }
            }
        }
        let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return descriptors.filter { descriptor in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(descriptor)")).map(listening.contains) ?? false
        }.count
    }

    @Test("SIGKILL a head whose embedded worker runs a command replica: the child dies with it, and a head started again binds the same ports")
    func childDiesWithItsNode() async throws {
        try await withCluster(headCPUs: 1) { cluster in
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                #"""
                applications:
                  - name: files
                    route_prefix: /files
                    deployments:
                      - name: Files
                        command: ["sh", "-c", "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1 --directory /tmp"]
                        ray_actor_options: {num_cpus: 0.5}
                """#
            )
            let status = try await cluster.waitForRunning(app: "files", deployment: "Files", replicas: 1)
            let replicaID = try #require(status["applications"]?["files"]?["deployments"]?["Files"]?["replicas"]?.arrayValue?.first?["replica_id"]?.stringValue)
            let (code, _, _) = try await cluster.get("/files/")
            #expect(code == 200)
            let children = Self.processes(ofReplica: replicaID)
            #expect(!children.isEmpty, "the replica's child should be running")
            // Its own listening socket and none of the head's (cluster, ingress, admin ports).
            for child in children {
                #expect(Self.listeningSockets(of: child) == 1, "the child holds listening sockets it did not open")
            }

            // SIGKILL, as a crash. (The harness's own wait for the head's exit comes after the
            // orphans are dealt with: one holding the head's inherited descriptors would keep
            // Foundation's Process from ever seeing it exit.)
            cluster.head.signal(SIGKILL)

            // The child goes with its node (no orphan left serving, unknown to any head).
            let deadline = ContinuousClock.now + .seconds(10)
            while !Self.processes(ofReplica: replicaID).isEmpty && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            let orphans = Self.processes(ofReplica: replicaID)
            #expect(orphans.isEmpty, "the replica's child outlived its node")
            // Cleaned up here so that a failure does not leave them holding ports for other tests.
            for orphan in orphans { kill(orphan, SIGKILL) }
            try await cluster.killHead()

            // And nothing holds the head's ports: it starts again on all three.
            try await cluster.restartHead(samePorts: true)
            #expect(!cluster.head.output.contains("Address already in use"))
            _ = try await cluster.waitForRunning(app: "files", deployment: "Files", replicas: 1)
            let (again, _, _) = try await cluster.get("/files/")
            #expect(again == 200)
        }
    }

    @Test("a command replica whose port accepts but whose server never answers fails its default health check (GET /) and is replaced")
    func hungServerReplaced() async throws {
        // Listens (so the kernel completes every handshake) and never accepts or answers.
        let script = """
            import os, socket, time
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(os.environ["PORT"])))
            s.listen(64)
            time.sleep(3600)
            """
        try await withCluster(headCPUs: 1) { cluster in
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: hung
                    route_prefix: /hung
                    deployments:
                      - name: Hung
                        command: ["python3", "-c", \(JSONValue.string(script).jsonString())]
                        health_check_period_s: 0.5
                        health_check_timeout_s: 0.5
                        ray_actor_options: {num_cpus: 0.5}
                """)
            let deadline = ContinuousClock.now + .seconds(30)
            var events = ""
            while ContinuousClock.now < deadline {
                events = try await cluster.adminCall(.get, "/api/serve/events").1
                if events.contains("unhealthy") { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(events.contains("unhealthy: failed 3 health checks in a row"), "\(events)\n\(cluster.logs)")
        }
    }

    @Test("a process replica whose port another process took first starts again on a new port, and serves there")
    func portTakenRetried() async throws {
        // The stranger: listens and answers on the port the replica is handed first.
        let stranger = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { _, writer in
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "stranger"))
        }
        let taken = stranger.port
        let handed = NIOLockedValueBox([Int]())
        let logs = FileManager.default.temporaryDirectory.appendingPathComponent("serve-race-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: logs) }
        var environment = ProcessInfo.processInfo.environment
        environment["SERVE_REPLICA_ID"] = "Race#1"
        let replica = try await ProcessReplica.launch(
            replicaID: "Race#1",
            argv: ["sh", "-c", "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1 --directory /tmp"],
            environment: environment,
            workingDirectory: nil,
            healthPath: nil,
            logDirectory: logs,
            readyTimeout: .seconds(30),
            logger: Logger(label: "test.race"),
            choosePort: {
                let port = try handed.withLockedValue { $0.isEmpty ? taken : try ProcessReplica.freePort() }
                handed.withLockedValue { $0.append(port) }
                return port
            },
            onExit: { _, _ in }
        )
        #expect(handed.withLockedValue { $0 }.first == taken)
        #expect(replica.port != taken, "the replica was taken to be ready on the stranger's port")
        let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: replica.port)
        let response = try await pool.send(HTTPRequest(method: .get, scheme: "http", authority: "x", path: "/"), timeout: .seconds(10))
        let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
        #expect(response.head.status == .ok && !body.contains("stranger"))
        await pool.close()
        await replica.terminate(grace: .seconds(2))
        await stranger.shutdown(gracePeriod: .seconds(1))
    }
}
