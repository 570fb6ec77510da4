import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeWire

/// A `command` deployment's replica: one child process serving HTTP/1.1 on 127.0.0.1:$PORT
/// (Flask, FastAPI, any server). It is ready when its port accepts, or when `health_path`
/// answers 2xx; it is stopped with SIGTERM, then SIGKILL after the graceful timeout.
final class ProcessReplica: Sendable {
    let replicaID: String
    let argv: [String]
    let port: Int
    let healthPath: String?
    private let process: ChildProcess
    private let logURL: URL
    private let pool: HTTP1ConnectionPool
    private let exited = NIOLockedValueBox<Int32?>(nil)
    /// Set by `terminate`: a request cut short by it was stopped, not failed.
    private let terminating = NIOLockedValueBox(false)

    struct LaunchError: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts the child. `onExit` is called if it ends on its own (not through `terminate`).
    init(
        replicaID: String,
        argv: [String],
        environment: [String: String],
        workingDirectory: String?,
        healthPath: String?,
        logDirectory: URL,
        onExit: @escaping @Sendable (Int32, String) -> Void
    ) throws {
        guard !argv.isEmpty else { throw LaunchError(description: "the command is empty") }
        self.replicaID = replicaID
        self.argv = argv
        self.healthPath = healthPath.flatMap { $0.isEmpty ? nil : $0 }
        self.port = try Self.freePort()
        self.logURL = logDirectory.appendingPathComponent("\(replicaID.replacingOccurrences(of: "/", with: "_")).log")
        try FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: self.logURL.path, contents: nil)
        var env = environment
        env["PORT"] = String(self.port)
        self.pool = HTTP1ConnectionPool(host: "127.0.0.1", port: self.port)
        self.process = try ChildProcess(argv: argv, environment: env, workingDirectory: workingDirectory, logPath: self.logURL.path)
        let exited = self.exited
        let logURL = self.logURL
        self.process.onExit { status in
            let first = exited.withLockedValue { value -> Bool in
                defer { value = status }
                return value == nil
            }
            if first { onExit(status, Self.tail(of: logURL)) }
        }
    }

    /// Waits until the child accepts connections (or its health path answers 2xx).
    func waitUntilReady(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = self.exited.withLockedValue({ $0 }) {
                throw LaunchError(description: "the process exited with status \(status) before it was ready; its output ends with:\n\(Self.tail(of: self.logURL))")
            }
            if (try? await self.probe()) == true { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw LaunchError(description: "the process did not accept connections on port \(self.port) within \(timeout); its output ends with:\n\(Self.tail(of: self.logURL))")
    }

    /// The periodic health check: the process is alive and answers as at readiness.
    func checkHealth() async throws {
        if let status = self.exited.withLockedValue({ $0 }) {
            throw LaunchError(description: "the process exited with status \(status)")
        }
        guard try await self.probe() else {
            throw LaunchError(description: "\(self.healthPath ?? "its port") did not answer 2xx")
        }
    }

    private func probe() async throws -> Bool {
        guard let healthPath = self.healthPath else {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(1))
                .connect(host: "127.0.0.1", port: self.port).get()
            try await channel.close()
            return true
        }
        let response = try await self.pool.send(
            HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1:\(self.port)", path: healthPath),
            timeout: .seconds(5)
        )
        _ = try await response.body.collect(upTo: 1 << 20)
        return response.head.status.kind == .successful
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
                    HTTPResponse(status: .serviceUnavailable, headerFields: [.contentType: "text/plain; charset=utf-8"]),
                    body: ByteBuffer(string: "replica \(self.replicaID) was stopped before this request finished (graceful_shutdown_timeout_s passed)\n")
                )
                return
            }
            try await writer.respond(
                HTTPResponse(status: .badGateway, headerFields: [.contentType: "text/plain; charset=utf-8"]),
                body: ByteBuffer(string: "replica \(self.replicaID) failed: \(error)\n")
            )
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

    static func tail(of url: URL, lines: Int = 20) -> String {
        guard let data = try? Data(contentsOf: url) else { return "" }
        let text = String(decoding: data.suffix(16 << 10), as: UTF8.self)
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
