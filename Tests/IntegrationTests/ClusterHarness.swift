import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

/// The package root, from this file's path.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

struct HarnessFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func builtBinary(_ name: String) throws -> URL {
    for configuration in ["debug", "release"] {
        let url = packageRoot.appendingPathComponent(".build/\(configuration)/\(name)")
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw HarnessFailure("\(name) is not built; run `swift build` (make test does) first")
}

/// A real child process (serve-head, serve-worker, serve) with its output kept for failures.
final class Child: @unchecked Sendable {
    let name: String
    let process = Process()
    let outputURL: URL

    /// `namespace`: run it inside that Linux network namespace (`ip netns exec`, which execs
    /// the binary, so the process id and signals are the binary's own).
    init(_ name: String, _ arguments: [String], environment: [String: String] = [:], namespace: String? = nil) throws {
        self.name = name
        self.outputURL = FileManager.default.temporaryDirectory.appendingPathComponent("serve-it-\(name)-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: self.outputURL.path, contents: nil)
        let handle = try FileHandle(forWritingTo: self.outputURL)
        if let namespace {
            self.process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            self.process.arguments = ["netns", "exec", namespace, try builtBinary(name).path] + arguments
        } else {
            self.process.executableURL = try builtBinary(name)
            self.process.arguments = arguments
        }
        var env = ProcessInfo.processInfo.environment
        env["SERVE_TOKEN"] = nil
        for (key, value) in environment { env[key] = value }
        self.process.environment = env
        self.process.currentDirectoryURL = packageRoot
        self.process.standardOutput = handle
        self.process.standardError = handle
        try self.process.run()
    }

    var output: String {
        (try? Data(contentsOf: self.outputURL)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    func waitForOutput(matching pattern: String, timeout: Duration = .seconds(60)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let output = self.output
            if output.contains(pattern) { return output }
            if !self.process.isRunning { break }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw HarnessFailure("\(self.name) did not print '\(pattern)'; its output:\n\(self.output)")
    }

    func signal(_ number: Int32) {
        if self.process.isRunning { kill(self.process.processIdentifier, number) }
    }

    /// Waits for the process to exit by itself; returns its status.
    func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while self.process.isRunning {
            if ContinuousClock.now > deadline { throw HarnessFailure("\(self.name) did not exit; output:\n\(self.output)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        return self.process.terminationStatus
    }

    deinit {
        if self.process.isRunning {
            kill(self.process.processIdentifier, SIGKILL)
            self.process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: self.outputURL)
    }
}

/// A head (and optional workers) started from the real binaries on free ports.
final class TestCluster: @unchecked Sendable {
    private(set) var head: Child
    /// Heads this cluster had before a restart (their logs belong to the story).
    private(set) var previousHeads: [Child] = []
    var workers: [Child] = []
    private(set) var clusterPort: Int
    private(set) var httpPort: Int
    private(set) var adminPort: Int
    let token: String
    let stateDirectory: URL
    private(set) var ingress: HTTP1ConnectionPool
    private(set) var admin: HTTP1ConnectionPool
    private let headArguments: [String]
    private let headEnvironment: [String: String]

    /// `headCPUs` 0: the head hosts nothing (replicas go to workers). `headArguments` and
    /// `headEnvironment` are added to serve-head's, on every (re)start.
    init(
        headCPUs: Double? = 0,
        token: String = "test-token-\(UInt32.random(in: 0...UInt32.max))",
        headArguments: [String] = [], headEnvironment: [String: String] = [:]
    ) async throws {
        self.token = token
        self.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-head-\(UUID().uuidString)")
        var arguments = [
            "--http-port", "0", "--admin-port", "0", "--http-host", "127.0.0.1", "--host", "127.0.0.1",
            "--state-dir", self.stateDirectory.path, "--token", token,
        ]
        if let headCPUs { arguments += ["--num-cpus", String(headCPUs)] }
        self.headArguments = arguments + headArguments
        self.headEnvironment = headEnvironment
        let (head, ports) = try await Self.startHead(self.headArguments + ["--port", "0"], environment: headEnvironment)
        self.head = head
        (self.clusterPort, self.httpPort, self.adminPort) = ports
        self.ingress = HTTP1ConnectionPool(host: "127.0.0.1", port: self.httpPort)
        self.admin = HTTP1ConnectionPool(host: "127.0.0.1", port: self.adminPort)
    }

    /// Starts serve-head and reads its ports from its banner.
    private static func startHead(_ arguments: [String], environment: [String: String]) async throws -> (Child, (cluster: Int, http: Int, admin: Int)) {
        let head = try Child("serve-head", arguments, environment: environment)
        let banner = try await head.waitForOutput(matching: "  state dir ")
        func port(after label: String) throws -> Int {
            // The banner's own line (a debug log line may name the part too).
            guard let line = banner.split(separator: "\n").first(where: { $0.hasPrefix("  \(label)") }),
                let match = line.firstMatch(of: /:(\d+)/), let port = Int(match.1)
            else { throw HarnessFailure("no port for '\(label)' in:\n\(banner)") }
            return port
        }
        return (head, (try port(after: "cluster port"), try port(after: "HTTP ingress"), try port(after: "admin API")))
    }

    /// Kills the head with SIGKILL, as a crash would, and waits until it is gone.
    func killHead() async throws {
        await self.ingress.close()
        await self.admin.close()
        self.head.signal(SIGKILL)
        _ = try await self.head.waitForExit()
    }

    /// Starts a head again with the same state dir, token and cluster port (the workers' retries
    /// find it there); its HTTP and admin ports are new.
    /// `samePorts`: the HTTP and admin ports too (what a crashed head's restart by systemd or
    /// Kubernetes does: the ports of its config, which must be free to bind again).
    func restartHead(samePorts: Bool = false) async throws {
        var arguments = self.headArguments
        if samePorts {
            for (flag, port) in [("--http-port", self.httpPort), ("--admin-port", self.adminPort)] {
                if let index = arguments.firstIndex(of: flag) { arguments[index + 1] = String(port) }
            }
        }
        let (head, ports) = try await Self.startHead(arguments + ["--port", String(self.clusterPort)], environment: self.headEnvironment)
        self.previousHeads.append(self.head)
        self.head = head
        (self.clusterPort, self.httpPort, self.adminPort) = ports
        self.ingress = HTTP1ConnectionPool(host: "127.0.0.1", port: self.httpPort)
        self.admin = HTTP1ConnectionPool(host: "127.0.0.1", port: self.adminPort)
    }

    /// A worker whose proxy listens on a free loopback port (unless `extra` names its own).
    @discardableResult
    func addWorker(cpus: Double, extra: [String] = [], token: String? = nil) async throws -> Child {
        let proxy = extra.contains("--http-port") ? [] : ["--http-host", "127.0.0.1", "--http-port", "0"]
        let worker = try Child("serve-worker", [
            "--address", "127.0.0.1:\(self.clusterPort)", "--num-cpus", String(cpus), "--num-gpus", "0",
            "--listen-host", "127.0.0.1", "--token", token ?? self.token,
        ] + proxy + extra)
        self.workers.append(worker)
        return worker
    }

    /// Waits until `count` nodes are ALIVE.
    func waitForNodes(_ count: Int, timeout: Duration = .seconds(60)) async throws -> [JSONValue] {
        let deadline = ContinuousClock.now + timeout
        var last: [JSONValue] = []
        while ContinuousClock.now < deadline {
            let (_, body) = try await self.adminCall(.get, "/api/cluster/nodes")
            last = (try JSONValue.parse(body))["nodes"]?.arrayValue ?? []
            if last.filter({ $0["state"]?.stringValue == "ALIVE" }).count >= count { return last }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw HarnessFailure("only \(last.count) node(s) registered:\n\(self.logs)")
    }

    func adminCall(_ method: HTTPRequest.Method, _ path: String, body: String? = nil) async throws -> (Int, String) {
        var fields = HTTPFields()
        fields[.authorization] = "Bearer \(self.token)"
        let head = HTTPRequest(method: method, scheme: "http", authority: "127.0.0.1", path: path, headerFields: fields)
        let response = try await self.admin.send(head, body: body.map { ByteBuffer(string: $0) }, timeout: .seconds(30))
        return (response.head.status.code, String(buffer: try await response.body.collect(upTo: 16 << 20)))
    }

    func deploy(_ yaml: String) async throws {
        let (status, body) = try await self.adminCall(.put, "/api/serve/applications/", body: yaml)
        guard status == 200 else { throw HarnessFailure("deploy answered \(status): \(body)") }
    }

    func status() async throws -> JSONValue {
        let (_, body) = try await self.adminCall(.get, "/api/serve/applications/")
        return try JSONValue.parse(body)
    }

    /// Waits until the app is RUNNING with `replicas` RUNNING replicas in `deployment`.
    func waitForRunning(app: String, deployment: String, replicas: Int, timeout: Duration = .seconds(90)) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        var last = JSONValue.null
        while ContinuousClock.now < deadline {
            last = try await self.status()
            let appStatus = last["applications"]?[app]
            let running = appStatus?["deployments"]?[deployment]?["replicas"]?.arrayValue?
                .filter { $0["state"]?.stringValue == "RUNNING" }.count ?? 0
            let total = appStatus?["deployments"]?[deployment]?["replicas"]?.arrayValue?.count ?? 0
            if appStatus?["status"]?.stringValue == "RUNNING" && running == replicas && total == replicas { return last }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw HarnessFailure("\(app)/\(deployment) did not reach \(replicas) running replicas; status:\n\(last.jsonString())\n\(self.logs)")
    }

    func get(_ path: String) async throws -> (Int, String, HTTPFields) {
        let response = try await self.ingress.send(
            HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: path), timeout: .seconds(30))
        return (response.head.status.code, String(buffer: try await response.body.collect(upTo: 16 << 20)), response.head.headerFields)
    }

    func post(_ path: String, body: String) async throws -> (Int, String) {
        let response = try await self.ingress.send(
            HTTPRequest(method: .post, scheme: "http", authority: "127.0.0.1", path: path, headerFields: [.contentLength: String(body.utf8.count)]),
            body: ByteBuffer(string: body), timeout: .seconds(30))
        return (response.head.status.code, String(buffer: try await response.body.collect(upTo: 16 << 20)))
    }

    /// Every process's output, for a failing test's report.
    var logs: String {
        (self.previousHeads.map { "--- serve-head (before a restart) ---\n" + $0.output } + ["--- serve-head ---\n" + self.head.output] + self.workers.enumerated().map { "--- serve-worker \($0.offset) ---\n" + $0.element.output })
            .joined(separator: "\n")
    }

    func stop() async {
        await self.ingress.close()
        await self.admin.close()
        for worker in self.workers { worker.signal(SIGTERM) }
        self.head.signal(SIGTERM)
        for worker in self.workers { _ = try? await worker.waitForExit(timeout: .seconds(15)) }
        _ = try? await self.head.waitForExit(timeout: .seconds(15))
        try? FileManager.default.removeItem(at: self.stateDirectory)
    }
}

/// Runs `body` with a cluster, printing every process's log if it throws.
func withCluster(
    headCPUs: Double? = 0,
    headArguments: [String] = [],
    _ body: (TestCluster) async throws -> Void
) async throws {
    let cluster = try await TestCluster(headCPUs: headCPUs, headArguments: headArguments)
    do {
        try await body(cluster)
    } catch {
        print(cluster.logs)
        await cluster.stop()
        throw error
    }
    await cluster.stop()
}
