import Foundation
import HTTPTypes
import Logging
import NIOCore
import ServeCore
import ServeHead
import ServeWire
import ServiceLifecycle
import Testing

/// Each binary runs its parts as services of one `ServiceGroup` (issue 19, item 1): SIGTERM (and
/// SIGINT) stop them gracefully in a fixed order; a part that cannot start or fails takes the
/// process down with an error that names it, instead of leaving it half up.
@Suite("Lifecycles", .serialized)
struct LifecycleTests {
    /// Where each of `lines` first appears in `output` (fails the test for one that is missing).
    static func positions(of lines: [String], in output: String) -> [String.Index] {
        lines.compactMap { line in
            let range = output.range(of: line)
            #expect(range != nil, "'\(line)' is missing from:\n\(output)")
            return range?.lowerBound
        }
    }

    @Test(
        "SIGTERM on serve-head: the ingress, the applications, its worker, the admin API and the cluster port stop in that order; it exits 0 and keeps the config"
    )
    func headStopsInOrder() async throws {
        let cluster = try await TestCluster(headCPUs: 1)
        defer { Task { await cluster.stop() } }
        _ = try await cluster.waitForNodes(1)
        try await cluster.deploy(
            FailureTests.spreadConfig(replicas: 1).replacingOccurrences(of: "num_cpus: 1", with: "num_cpus: 0.5"))
        _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)

        cluster.head.signal(SIGTERM)
        #expect(try await cluster.head.waitForExit(timeout: .seconds(30)) == 0, "\(cluster.logs)")
        let output = cluster.head.output
        let order = Self.positions(
            of: [
                "serve-head: shutting down (draining replicas)",
                "no longer accepting HTTP requests",
                "HTTP ingress closed",
                "stopping the applications' replicas",
                "leaving the cluster: drained: no replica left on this node",
                "admin API closed",
                "cluster port closed",
                "serve-head: stopped",
            ],
            in: output)
        #expect(order == order.sorted(), "the parts stopped out of order:\n\(output)")
        // SIGTERM keeps the config: a head started again on the dir serves it.
        let saved = try String(
            contentsOf: cluster.stateDirectory.appendingPathComponent("config.json"), encoding: .utf8)
        #expect(saved.contains("\"hello\""), "\(saved)")
    }

    @Test("SIGINT on serve run (Ctrl-C): the embedded cluster shuts down gracefully and it exits 0")
    func serveRunInterrupted() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("serve-run-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: state) }
        let config = state.appendingPathComponent("hello.yaml")
        try FailureTests.spreadConfig(replicas: 1).replacingOccurrences(of: "num_cpus: 1", with: "num_cpus: 0.5")
            .write(to: config, atomically: true, encoding: .utf8)
        let run = try Child(
            "serve",
            [
                "run", config.path, "--http-port", "0", "--admin-port", "0", "--port", "0",
                "--num-cpus", "1", "--num-gpus", "0", "--state-dir", state.path,
            ])
        _ = try await run.waitForOutput(matching: "replica running")
        run.signal(SIGINT)
        #expect(try await run.waitForExit(timeout: .seconds(30)) == 0, "\(run.output)")
        let order = Self.positions(
            of: ["serve run: shutting down (draining replicas)", "cluster port closed", "serve run: stopped"],
            in: run.output)
        #expect(order == order.sorted(), "\(run.output)")
    }

    @Test("a port that is taken stops serve-head at once, non-zero, with an error naming the part and its flag")
    func headPortTaken() async throws {
        let taken = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { _, writer in
            try await writer.respond(.ok, text: "taken\n")
        }
        let port = taken.port
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("serve-taken-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: state) }
        let head = try Child(
            "serve-head",
            [
                "--port", "0", "--http-port", "0", "--http-host", "127.0.0.1", "--host", "127.0.0.1", "--admin-port",
                String(port), "--num-cpus", "0", "--state-dir", state.path, "--token", "taken-token",
            ])
        let status = try await head.waitForExit(timeout: .seconds(20))
        await taken.close()
        #expect(status != 0, "\(head.output)")
        #expect(
            head.output.contains(
                "the admin API (--admin-port) cannot listen on 127.0.0.1:\(port): Address already in use"),
            "\(head.output)")
    }

    @Test("a metrics port that is taken stops serve-worker, non-zero, with an error naming the flag")
    func workerPortTaken() async throws {
        let taken = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { _, writer in
            try await writer.respond(.ok, text: "taken\n")
        }
        let port = taken.port
        let worker = try Child(
            "serve-worker",
            [
                "--address", "127.0.0.1:1", "--token", "taken-token", "--listen-host", "127.0.0.1", "--num-cpus", "1",
                "--num-gpus", "0", "--metrics-port", String(port),
            ])
        let status = try await worker.waitForExit(timeout: .seconds(20))
        await taken.close()
        #expect(status != 0, "\(worker.output)")
        #expect(
            worker.output.contains("the metrics endpoint (--metrics-port) cannot listen on 127.0.0.1:\(port)"),
            "\(worker.output)")
    }

    @Test(
        "a second SIGTERM to a draining worker stops it without waiting for the drain: its replica stops and it exits 0"
    )
    func secondSignalStopsTheDrain() async throws {
        try await withCluster { cluster in
            // The only worker: its replica has nowhere to move, so the drain would wait out
            // --drain-timeout-s (60 s here).
            let worker = try await cluster.addWorker(cpus: 2, extra: ["--drain-timeout-s", "60"])
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(FailureTests.spreadConfig(handler: "sleep", replicas: 1))
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)

            worker.signal(SIGTERM)
            _ = try await worker.waitForOutput(
                matching: "draining: the head moves this node's replicas elsewhere", timeout: .seconds(10))
            // The first signal has reached the worker's service; the second is heard from then on.
            try await Task.sleep(for: .milliseconds(500))
            let again = ContinuousClock.now
            worker.signal(SIGTERM)
            #expect(try await worker.waitForExit(timeout: .seconds(20)) == 0, "\(worker.output)")
            #expect(ContinuousClock.now - again < .seconds(20))
            #expect(
                worker.output.contains("SIGTERM again: stopping now, without waiting for the drain"), "\(worker.output)"
            )
        }
    }

    /// A part that finishes with an error after the head started.
    struct Failing: Service, CustomStringConvertible {
        var description: String { "failing part" }
        func run() async throws {
            try await Task.sleep(for: .milliseconds(200))
            throw HarnessFailure("the failing part gave up")
        }
    }

    @Test("a part of the head that fails stops the others: run throws its error and the head's ports close")
    func failingPartStopsTheHead() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("serve-failing-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: state) }
        let head = try await HeadRuntime.start(.loopback(state: state, token: "lifecycle-token"))
        let started = ContinuousClock.now
        await #expect(throws: HarnessFailure.self) {
            try await head.run(hosting: Failing())
        }
        #expect(ContinuousClock.now - started < .seconds(10))
        let admin = HTTP1ConnectionPool(host: "127.0.0.1", port: head.adminPort)
        await #expect(throws: (any Error).self) {
            _ = try await admin.send(
                HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/-/healthz"),
                timeout: .seconds(5))
        }
        await admin.close()
    }

    @Test("a shutdown asked for before the head runs: run starts the parts and stops them at once")
    func shutdownBeforeRun() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("serve-early-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: state) }
        let head = try await HeadRuntime.start(.loopback(state: state, token: "lifecycle-token"))
        await head.requestShutdown()
        let started = ContinuousClock.now
        try await head.run()
        #expect(ContinuousClock.now - started < .seconds(10))
    }
}
