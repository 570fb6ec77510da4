import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeCore
import ServeWire

/// A `command` deployment's replica: one child process serving HTTP/1.1 on 127.0.0.1:$PORT
/// (Flask, FastAPI, any server). It is ready when its port accepts, or when `health_path`
/// answers 2xx; it is stopped with SIGTERM, then SIGKILL after the graceful timeout.
///
/// Health: with `health_path`, a check is a GET there that must answer 2xx; without, a `GET /`
/// that must get any response at all (any status) within `health_check_timeout_s`, so a child
/// whose port still accepts but whose server hangs is found out and replaced.
final class ProcessReplica: Sendable {
    let replicaID: String
    let argv: [String]
    let port: Int
    let healthPath: String?
    private let process: ChildProcess
    /// The child's output (standard output and error), rotated past 64 MiB.
    let logURL: URL
    private let pool: HTTP1ConnectionPool
    private let exited = NIOLockedValueBox<Int32?>(nil)
    /// Set by `terminate`: a request cut short by it was stopped, not failed.
    private let terminating = NIOLockedValueBox(false)
    /// Set once the child is ready: only then is its exit reported through `onExit` (before,
    /// the start itself sees it, and may try again on another port).
    private let started = NIOLockedValueBox(false)

    struct LaunchError: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts the child and waits until it is ready (`readyTimeout`). A port taken by another
    /// process between `choosePort` and the child's bind is tried again on a new port
    /// (`ServeCore.ChildPortRace`); a child that fails for its own reasons, or never gets ready,
    /// is stopped and its start fails with its last output lines. `onExit` is called if the child
    /// ends on its own after it was ready (not through `terminate`).
    static func launch(
        replicaID: String,
        argv: [String],
        environment: [String: String],
        workingDirectory: String?,
        healthPath: String?,
        logDirectory: URL,
        readyTimeout: Duration,
        logger: Logger,
        choosePort: () throws -> Int = ProcessReplica.freePort,
        onExit: @escaping @Sendable (Int32, String) -> Void
    ) async throws -> ProcessReplica {
        var attempt = 1
        while true {
            let replica = try ProcessReplica(
                replicaID: replicaID, argv: argv, environment: environment, workingDirectory: workingDirectory,
                healthPath: healthPath, logDirectory: logDirectory, port: try choosePort(), onExit: onExit)
            let outcome = await replica.waitForStart(timeout: readyTimeout)
            switch ChildPortRace.decide(attempt: attempt, outcome: outcome) {
            case .ready:
                replica.started.withLockedValue { $0 = true }
                // It may have exited between the last look and now: report it as `onExit` would.
                if let status = replica.exited.withLockedValue({ $0 }), status >= 0 {
                    onExit(status, Self.tail(of: replica.logURL))
                }
                return replica
            case .retry(let reason):
                logger.warning("starting the replica's process again on another port", metadata: ["reason": "\(reason)"])
                await replica.terminate(grace: .seconds(1))
                attempt += 1
            case .fail(let reason):
                await replica.terminate(grace: .seconds(1))
                throw LaunchError(description: reason)
            }
        }
    }

    private init(
        replicaID: String,
        argv: [String],
        environment: [String: String],
        workingDirectory: String?,
        healthPath: String?,
        logDirectory: URL,
        port: Int,
        onExit: @escaping @Sendable (Int32, String) -> Void
    ) throws {
        guard !argv.isEmpty else { throw LaunchError(description: "the command is empty") }
        self.replicaID = replicaID
        self.argv = argv
        self.healthPath = healthPath.flatMap { $0.isEmpty ? nil : $0 }
        self.port = port
        self.logURL = logDirectory.appendingPathComponent("\(replicaID.replacingOccurrences(of: "/", with: "_")).log")
        try FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: self.logURL.path, contents: nil)
        var env = environment
        env["PORT"] = String(self.port)
        self.pool = HTTP1ConnectionPool(host: "127.0.0.1", port: self.port)
        // A replica dies with its node: a head or worker killed with SIGKILL leaves no orphan
        // serving on, unknown to any head (the restarted node starts it again).
        self.process = try ChildProcess(
            argv: argv, environment: env, workingDirectory: workingDirectory, logPath: self.logURL.path, dieWithParent: true)
        let exited = self.exited
        let started = self.started
        let logURL = self.logURL
        self.process.onExit { status in
            let first = exited.withLockedValue { value -> Bool in
                defer { value = status }
                return value == nil
            }
            if first && started.withLockedValue({ $0 }) { onExit(status, Self.tail(of: logURL)) }
        }
    }

    /// Waits until the child listens on its port (or its health path answers 2xx), and tells a
    /// port taken by another process from the child's own failure: a listener on the port that
    /// is not the child's (nor in its process group), or one found there after the child exited.
    private func waitForStart(timeout: Duration) async -> ChildPortRace.Outcome {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = self.exited.withLockedValue({ $0 }) {
                if await self.accepts() { return .portTaken(port: self.port) }
                return .failed(
                    "the process exited with status \(status) before it was ready; its output ends with:\n\(Self.tail(of: self.logURL))")
            }
            if await self.accepts() {
                switch Self.listenerOwnership(port: self.port, processGroup: self.process.pid) {
                case .foreign:
                    return .portTaken(port: self.port)
                case .ours, .unknown:
                    guard let healthPath = self.healthPath else { return .ready }
                    if (try? await self.answers2xx(healthPath, timeout: .seconds(5))) == true { return .ready }
                case .notListening:
                    break  // it went away between the connect and the look: look again
                }
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return .failed(
            "the process did not accept connections on port \(self.port) within \(timeout); its output ends with:\n\(Self.tail(of: self.logURL))")
    }

    /// The periodic health check: the process is alive and its server answers: `health_path`
    /// with 2xx, or else `GET /` with any response, within `timeout` (`health_check_timeout_s`).
    /// A port that accepts is not enough: a hung server's kernel still completes the handshake.
    func checkHealth(timeout: Duration) async throws {
        // Every health check period, the log is kept within its bound too.
        Self.rotateLog(self.logURL, limit: Self.logRotationBytes)
        if let status = self.exited.withLockedValue({ $0 }) {
            throw LaunchError(description: "the process exited with status \(status)")
        }
        if let healthPath = self.healthPath {
            guard try await self.answers2xx(healthPath, timeout: timeout) else {
                throw LaunchError(description: "\(healthPath) did not answer 2xx")
            }
            return
        }
        // A connection of its own, closed after the response head: the body may be long or
        // endless (a streaming page), and requests in flight must not delay the check.
        let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: self.port, maxIdleConnections: 0)
        defer { Task { await pool.close() } }
        do {
            _ = try await pool.send(
                HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1:\(self.port)", path: "/"),
                timeout: Self.timeAmount(timeout))
        } catch HTTP2Error.timeout {
            throw LaunchError(description: "GET / got no response within \(timeout)")
        }
    }

    private static func timeAmount(_ duration: Duration) -> TimeAmount {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    private func accepts() async -> Bool {
        guard let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(1))
            .connect(host: "127.0.0.1", port: self.port).get()
        else { return false }
        try? await channel.close()
        return true
    }

    private func answers2xx(_ path: String, timeout: Duration) async throws -> Bool {
        let response = try await self.pool.send(
            HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1:\(self.port)", path: path),
            timeout: Self.timeAmount(timeout)
        )
        _ = try await response.body.collect(upTo: 1 << 20)
        return response.head.status.kind == .successful
    }

    enum ListenerOwnership: Equatable {
        /// A process of the child's process group listens on the port.
        case ours
        /// Something listens there, and none of it is the child's.
        case foreign
        case notListening
        /// /proc could not be read: assume the child's, as before this check existed.
        case unknown
    }

    /// Who listens on `port` (any local address): the listening sockets' inodes from
    /// /proc/net/tcp and tcp6, matched against the descriptors of the processes in
    /// `processGroup` (the child made its own group, so servers that fork workers count too).
    static func listenerOwnership(port: Int, processGroup: pid_t) -> ListenerOwnership {
        var inodes: Set<String> = []
        var readAny = false
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = try? String(contentsOfFile: table, encoding: .utf8) else { continue }
            readAny = true
            for line in text.split(separator: "\n").dropFirst() {
                let columns = line.split(separator: " ", omittingEmptySubsequences: true)
                guard columns.count > 9, columns[3] == "0A",
                    let hexPort = columns[1].split(separator: ":").last, Int(hexPort, radix: 16) == port
                else { continue }
                inodes.insert("socket:[\(columns[9])]")
            }
        }
        guard readAny else { return .unknown }
        if inodes.isEmpty { return .notListening }
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return .unknown }
        for entry in entries {
            guard pid_t(entry) != nil,
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            // After "(comm)": state, ppid, pgrp, ...
            let fields = stat[stat.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 2, pid_t(fields[2]) == processGroup else { continue }
            let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(entry)/fd")) ?? []
            for descriptor in descriptors {
                if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/fd/\(descriptor)"),
                    inodes.contains(target)
                {
                    return .ours
                }
            }
        }
        return .foreign
    }

    /// Forwards a request to the child over HTTP/1.1, streaming the body both ways, as a faithful
    /// intermediary (RFC 9110 §7.6): the child sees the client's authority as its `Host`; a
    /// request without a body goes without one (no chunked coding and no `0` chunk, which a
    /// server that does not read bodies on GET would take for its next request); the response's
    /// status, fields (its `content-length` and `content-encoding` included) and trailers come
    /// back as the child sent them, less the hop-by-hop fields; and a response the child cuts
    /// short fails here, so the cut reaches the client as a cut.
    func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        var head = request.head
        head.headerFields[ServeHeaders.replica] = nil
        head.headerFields[ServeHeaders.token] = nil
        let response: HTTPClientResponse
        do {
            if request.hasBody {
                response = try await self.pool.send(head, body: request.body)
            } else {
                response = try await self.pool.send(head, body: nil)
            }
        } catch {
            if self.terminating.withLockedValue({ $0 }) {
                // `terminate` killed it: its stop ran past `graceful_shutdown_timeout_s`.
                try await writer.respond(
                    .serviceUnavailable,
                    text: "replica \(self.replicaID) was stopped before this request finished (graceful_shutdown_timeout_s passed)\n")
                return
            }
            try await writer.respond(.badGateway, text: "replica \(self.replicaID) failed: \(error)\n")
            return
        }
        try await writer.writeHead(response.head)
        for try await chunk in response.body {
            try await writer.write(chunk)
        }
        try await writer.finish(trailers: response.body.trailers)
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace` (to its whole process group).
    func terminate(grace: Duration) async {
        self.terminating.withLockedValue { $0 = true }
        // Mark the exit as ours first, so it is not reported as a failure.
        let wasRunning = self.exited.withLockedValue { value -> Bool in
            guard value == nil else { return false }
            value = -1
            return true
        }
        if wasRunning {
            self.process.signal(SIGTERM)
            let deadline = ContinuousClock.now + grace
            while self.isAlive && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(20))
            }
            if self.isAlive { self.process.signal(SIGKILL) }
        }
        await self.pool.close()
    }

    /// Whether the child (its process, not yet reaped or still running) exists.
    private var isAlive: Bool {
        kill(self.process.pid, 0) == 0 && !Self.isZombie(self.process.pid)
    }

    private static func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }

    /// A child's output file is rotated past this size (checked every health check period).
    static let logRotationBytes = 64 << 20

    /// Keeps a log the child appends to (O_APPEND) within `limit`: past it, the file is copied to
    /// `NAME.1` (replacing the previous one) and truncated, as logrotate's copytruncate does
    /// (the child keeps its descriptor; lines written between the copy and the truncation are
    /// lost). Returns whether it rotated.
    @discardableResult
    static func rotateLog(_ url: URL, limit: Int) -> Bool {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: url.path))?[.size] as? Int, size > limit else {
            return false
        }
        let previous = url.appendingPathExtension("1")
        try? FileManager.default.removeItem(at: previous)
        guard (try? FileManager.default.copyItem(at: url, to: previous)) != nil else { return false }
        return truncate(url.path, 0) == 0
    }

    /// The last `lines` lines of a log, read from its last 16 KiB only (a log may be large).
    static func tail(of url: URL, lines: Int = 20) -> String {
        guard let handle = try? FileHandle(forReadingFrom: url) else { return "" }
        defer { try? handle.close() }
        let end = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: end > 16 << 10 ? end - (16 << 10) : 0)
        let data = (try? handle.readToEnd()) ?? Data()
        var text = Substring(String(decoding: data, as: UTF8.self))
        if text.hasSuffix("\n") { text = text.dropLast() }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// A free port on 127.0.0.1 for the child (bind to 0, read it, release it).
    static func freePort() throws -> Int {
        let socket = Foundation.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw LaunchError(description: "no socket for a port probe") }
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, length) }
        }
        guard bound == 0 else { throw LaunchError(description: "could not find a free port") }
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) }
        }
        guard named == 0 else { throw LaunchError(description: "could not read the free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
