import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import Testing

@testable import ServeWire

/// A bound server as a part of a `ServiceGroup`: the group's graceful shutdown lets what is in
/// flight finish; its cancellation closes everything at once.
@Suite("ServerService")
struct ServerServiceTests {
    /// A server whose requests wait `ms` (the query) before answering; `started` counts them.
    static func slowServer(started: NIOLockedValueBox<Int>) async throws -> HTTP1Server {
        try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            started.withLockedValue { $0 += 1 }
            let ms = Int(request.head.path?.split(separator: "=").last ?? "0") ?? 0
            try await Task.sleep(for: .milliseconds(ms))
            try await writer.respond(.ok, text: "done\n")
        }
    }

    static func get(_ pool: HTTP1ConnectionPool, _ path: String) async throws -> Int {
        let response = try await pool.send(
            HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: path), timeout: .seconds(20))
        _ = try await response.body.collect(upTo: 1 << 20)
        return response.head.status.code
    }

    static func waitUntil(_ done: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !done() {
            guard ContinuousClock.now < deadline else { throw TestFailure("timed out") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    @Test("graceful shutdown: the listener closes, the request in flight is answered, then run returns")
    func gracefulShutdown() async throws {
        let started = NIOLockedValueBox(0)
        let server = try await Self.slowServer(started: started)
        let group = ServiceGroup(
            services: [ServerService("slow", server, gracePeriod: .seconds(10))], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        let port = server.port
        let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
        let slow = Task { try await Self.get(pool, "/?ms=500") }
        try await Self.waitUntil { started.withLockedValue { $0 } == 1 }

        await group.triggerGracefulShutdown()
        #expect(try await slow.value == 200)
        try await running.value
        let fresh = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
        await #expect(throws: (any Error).self) { _ = try await Self.get(fresh, "/") }
        await fresh.close()
        await pool.close()
    }

    @Test("cancellation: every connection closes at once, in-flight requests too, and run returns without an error")
    func cancelled() async throws {
        let started = NIOLockedValueBox(0)
        let server = try await Self.slowServer(started: started)
        let group = ServiceGroup(
            services: [ServerService("slow", server, gracePeriod: .seconds(30))], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
        let slow = Task { try await Self.get(pool, "/?ms=30000") }
        try await Self.waitUntil { started.withLockedValue { $0 } == 1 }

        let cancelledAt = ContinuousClock.now
        running.cancel()
        try await running.value
        await #expect(throws: (any Error).self) { _ = try await slow.value }
        #expect(ContinuousClock.now - cancelledAt < .seconds(5))
        await pool.close()
    }

    @Test("serve-wire-echo exits 0 on SIGTERM")
    func echoStopsOnSIGTERM() async throws {
        let echo = try ChildProcess(try builtBinary("serve-wire-echo"), ["--port", "0", "--threads", "1"])
        _ = try await echo.waitForOutput(containing: "listening on")
        echo.kill(signal: SIGTERM)
        #expect(echo.process.terminationReason == .exit, "\(echo.output)")
        #expect(echo.process.terminationStatus == 0, "\(echo.output)")
    }
}
