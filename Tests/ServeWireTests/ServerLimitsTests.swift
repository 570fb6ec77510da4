import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import ServeWire

/// The limits a server sets on what one client may hold: header fields, time to send a head
/// (slowloris), connections, and HTTP/2 streams per connection.
@Suite("Server limits", .serialized)
struct ServerLimitsTests {
    @Test("more header fields than maxHeaderCount get 431 and the connection closes; at the limit is fine")
    func headerCount() async throws {
        var configuration = HTTP1Configuration()
        configuration.maxHeaderCount = 10
        let server = try await startHTTP1EchoServer(configuration: configuration)
        func head(_ count: Int) -> String {
            "GET /h HTTP/1.1\r\nHost: a\r\n" + (1..<count).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        }
        let over = try await RawConnection.connect(port: server.port)
        try await over.send(head(11))
        try await over.waitForClose()
        #expect(over.text.hasPrefix("HTTP/1.1 431"), "\(over.text)")
        #expect(over.text.lowercased().contains("connection: close"))
        let fine = try await RawConnection.connect(port: server.port)
        try await fine.send(head(10))
        let text = try await fine.wait { $0.hasSuffix("/h") }
        #expect(text.hasPrefix("HTTP/1.1 200"))
        await server.close()
    }

    /// Sends a request head one field at a time, `interval` apart, until the server closes;
    /// returns how long that took.
    private func trickle(port: Int, interval: Duration = .milliseconds(150)) async throws -> Duration {
        let raw = try await RawConnection.connect(port: port)
        let start = ContinuousClock.now
        try await raw.send("GET /slow HTTP/1.1\r\n")
        var field = 0
        while raw.channel.isActive && ContinuousClock.now - start < .seconds(20) {
            try await Task.sleep(for: interval)
            field += 1
            try? await raw.send("X-\(field): v\r\n")
        }
        #expect(!raw.text.contains("200"), "the slow head should not have been answered")
        return ContinuousClock.now - start
    }

    @Test("a head sent a field at a time is cut off after requestHeadTimeout (slowloris), on HTTP1Server and on the ingress's HTTPServer")
    func slowHead() async throws {
        var configuration = HTTP1Configuration()
        configuration.requestHeadTimeout = .milliseconds(600)
        let http1 = try await startHTTP1EchoServer(configuration: configuration)
        let both = try await HTTPServer.bind(host: "127.0.0.1", port: 0, http1: configuration) { request, writer in
            try await echoHandler(request, writer)
        }
        for port in [http1.port, both.port] {
            let took = try await self.trickle(port: port)
            #expect(took >= .milliseconds(500) && took < .seconds(5), "closed after \(took)")
            // A prompt client is served as before, and so is one that is idle between requests
            // (only an unfinished head is timed).
            let prompt = try await RawConnection.connect(port: port)
            try await prompt.send("GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
            _ = try await prompt.wait { $0.hasSuffix("/a") }
            try await Task.sleep(for: .milliseconds(900))
            try await prompt.send("GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
            let text = try await prompt.wait { $0.hasSuffix("/b") }
            #expect(text.components(separatedBy: "HTTP/1.1 200").count == 3)
        }
        await http1.close()
        await both.close()
    }

    @Test("past maxConnections a new connection is closed at once; the open ones are served, and room frees up as they close")
    func connectionCap() async throws {
        let server = try await HTTP1Server.bind(
            host: "127.0.0.1", port: 0, listener: ListenerConfiguration(maxConnections: 2)
        ) { request, writer in try await echoHandler(request, writer) }
        let first = try await RawConnection.connect(port: server.port)
        let second = try await RawConnection.connect(port: server.port)
        try await first.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        _ = try await first.wait { $0.hasSuffix("/1") }
        try await second.send("GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        _ = try await second.wait { $0.hasSuffix("/2") }
        let third = try await RawConnection.connect(port: server.port)
        try? await third.send("GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
        try await third.waitForClose()
        #expect(third.text.isEmpty)
        // The open ones are still served.
        try await first.send("GET /1b HTTP/1.1\r\nHost: a\r\n\r\n")
        _ = try await first.wait { $0.hasSuffix("/1b") }
        try await first.channel.close()
        let deadline = ContinuousClock.now + .seconds(5)
        while server.connectionCount > 1 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        let fourth = try await RawConnection.connect(port: server.port)
        try await fourth.send("GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
        _ = try await fourth.wait { $0.hasSuffix("/4") }
        await server.close()
    }

    @Test("HTTP/2: streams past maxConcurrentStreams are refused, and no more handlers than that run at once")
    func streamCap() async throws {
        var configuration = HTTP2Configuration()
        configuration.maxConcurrentStreams = 4
        let running = NIOLockedValueBox(0)
        let most = NIOLockedValueBox(0)
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { _, writer in
            let now = running.withLockedValue { $0 += 1; return $0 }
            most.withLockedValue { $0 = max($0, now) }
            defer { running.withLockedValue { $0 -= 1 } }
            try await Task.sleep(for: .seconds(3))
            try await writer.respond(HTTPResponse(status: .ok))
        }
        let peer = try await RawPeer.connect(port: server.port)
        var bytes = RawFrames.preface + RawFrames.emptySettings
        for stream in stride(from: UInt32(1), through: 15, by: 2) {
            bytes += RawFrames.headers(stream: stream, block: RawFrames.getBlock())
        }
        try await peer.send(bytes)
        let deadline = ContinuousClock.now + .seconds(2)
        var types: [UInt8] = []
        while ContinuousClock.now < deadline {
            types = RawFrames.types(in: peer.receivedBytes)
            if types.filter({ $0 == 0x3 }).count >= 4 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        // The peer never acknowledged the server's SETTINGS, so nghttp2 refuses each stream
        // past the limit with RST_STREAM (REFUSED_STREAM) rather than ending the connection.
        #expect(types.filter { $0 == 0x3 }.count == 4, "frames \(types)")
        #expect(!types.contains(RawFrames.goAwayType), "frames \(types)")
        #expect(most.withLockedValue { $0 } <= 4)
        try? await peer.channel.close()
        await server.close()
    }
}

@Suite("Stalled request bodies")
struct StalledBodyTests {
    @Test("a client that stops sending its body is answered 408 after bodyReadTimeout and the connection closes; the handler's read fails")
    func stalledBody() async throws {
        var configuration = HTTP1Configuration()
        configuration.bodyReadTimeout = .milliseconds(300)
        let readFailed = NIOLockedValueBox<String?>(nil)
        let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { request, writer in
            do {
                _ = try await request.body.collect(upTo: 1 << 20)
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "read it all\n"))
            } catch {
                readFailed.withLockedValue { $0 = "\(error)" }
                throw error
            }
        }
        let connection = try await RawConnection.connect(port: server.port)
        try await connection.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        let answer = try await connection.wait(timeout: 10) { $0.contains("\r\n\r\n") }
        #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
        try await connection.waitForClose(timeout: 10)
        #expect(readFailed.withLockedValue { $0 } != nil)
        await server.shutdown(gracePeriod: .seconds(1))
    }

    @Test("a body that keeps coming, slowly, is not cut off: the timer restarts with every chunk")
    func slowButSteadyBody() async throws {
        var configuration = HTTP1Configuration()
        configuration.bodyReadTimeout = .milliseconds(400)
        let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { request, writer in
            let body = try await request.body.collect(upTo: 1 << 20)
            try await writer.respond(HTTPResponse(status: .ok), body: body)
        }
        let connection = try await RawConnection.connect(port: server.port)
        try await connection.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        // 10 bytes over 1 s: every gap well under the timeout, the whole well over it.
        for digit in 0..<10 {
            try await Task.sleep(for: .milliseconds(100))
            try await connection.send("\(digit)")
        }
        let answer = try await connection.wait(timeout: 10) { $0.hasSuffix("0123456789") }
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        await server.shutdown(gracePeriod: .seconds(1))
    }

    @Test("a body read waiting for bytes ends when its task is cancelled")
    func cancellableRead() async throws {
        let started = NIOLockedValueBox(false)
        let outcome = NIOLockedValueBox<String?>(nil)
        let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            let reader = Task {
                started.withLockedValue { $0 = true }
                do {
                    _ = try await request.body.collect(upTo: 1 << 20)
                    outcome.withLockedValue { $0 = "read" }
                } catch {
                    outcome.withLockedValue { $0 = "\(type(of: error))" }
                }
            }
            while !started.withLockedValue({ $0 }) { await Task.yield() }
            try await Task.sleep(for: .milliseconds(100))
            reader.cancel()
            await reader.value
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "done\n"))
        }
        let connection = try await RawConnection.connect(port: server.port)
        try await connection.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
        let answer = try await connection.wait(timeout: 10) { $0.contains("done") }
        #expect(answer.hasPrefix("HTTP/1.1 200"))
        #expect(outcome.withLockedValue { $0 } == "CancellationError")
        await server.shutdown(gracePeriod: .seconds(1))
    }
}

/// The same limit on HTTP/2, per stream: one stalled upload ends alone, its connection and the
/// other streams on it go on (`HTTP2Configuration.bodyReadTimeout`). The client is the repo's own
/// HTTP/2 client over a real socket, which can open a stream, send part of a body and stop.
@Suite("HTTP/2 stalled request bodies", .serialized)
struct HTTP2StalledBodyTests {
    /// A server whose `/read` handler reads the whole body and echoes its size, whose `/head-first`
    /// handler sends its head before reading, and whose `/wait` handler holds its answer until
    /// `release` is opened. Every body read that fails is recorded.
    final class Server: Sendable {
        let server: HTTP2Server
        let readFailures = NIOLockedValueBox<[String: String]>([:])
        let released = NIOLockedValueBox(false)

        init(timeout: TimeAmount) async throws {
            var configuration = HTTP2Configuration()
            configuration.bodyReadTimeout = timeout
            let failures = self.readFailures
            let released = self.released
            self.server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { request, writer in
                let path = request.head.path ?? "/"
                if path == "/wait" {
                    while !released.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
                }
                if path == "/head-first" { try await writer.writeHead(HTTPResponse(status: .ok)) }
                do {
                    let body = try await request.body.collect(upTo: 1 << 20)
                    if path == "/head-first" {
                        try await writer.write(ByteBuffer(string: "read \(body.readableBytes) bytes\n"))
                        try await writer.finish()
                    } else {
                        try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "read \(body.readableBytes) bytes\n"))
                    }
                } catch {
                    failures.withLockedValue { $0[path] = "\(error)" }
                    throw error
                }
            }
        }
    }

    /// Runs `body` with a server and a client connected to it, and closes both at once afterwards,
    /// passing or failing: a stream the server never ends must fail the test, not hang it.
    func withServer(timeout: TimeAmount, _ body: (Server, HTTP2ClientConnection) async throws -> Void) async throws {
        let server = try await Server(timeout: timeout)
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.server.port)
        do {
            try await body(server, client)
        } catch {
            server.released.withLockedValue { $0 = true }
            await client.closeNow()
            await server.server.close()
            throw error
        }
        server.released.withLockedValue { $0 = true }
        await client.closeNow()
        await server.server.close()
    }

    @Test("a stream whose body stops is answered 408 after bodyReadTimeout; its connection and other streams go on")
    func stalledStreamAlone() async throws {
        try await self.withServer(timeout: .milliseconds(300)) { server, client in
            // Stream 2: a whole body, held by its handler until stream 1 has been answered.
            let waiting = try await client.openStream(request(.post, "/wait"), body: ByteBuffer(string: "all of it"))
            // Stream 1: part of a body, then nothing. (The client's own timeout only turns a server
            // that never answers into a failure instead of a hang.)
            let stalled = try await client.openStream(request(.post, "/read"), timeout: .seconds(10))
            try await stalled.write(ByteBuffer(string: "0123456789"))
            let answer = try await stalled.response()
            #expect(answer.head.status == .requestTimeout)
            let message = String(buffer: try await answer.body.collect(upTo: 1 << 16))
            #expect(message.contains("stopped arriving"), "\(message)")
            #expect(server.readFailures.withLockedValue { $0["/read"] } == "\(HTTP2Error.timeout)")
            // The client is told to stop sending (RST_STREAM NO_ERROR): further writes fail.
            await #expect(throws: HTTP2Error.streamClosed) {
                for _ in 0..<100 {
                    try await stalled.write(ByteBuffer(string: "more"))
                    try await Task.sleep(for: .milliseconds(10))
                }
        }

        server.released.withLockedValue { $0 = true }
        let other = try await waiting.response()
        #expect(other.head.status == .ok)
        #expect(String(buffer: try await other.body.collect(upTo: 1 << 16)) == "read 9 bytes\n")
        // And a new stream on the same connection is served.
        let again = try await client.send(request(.post, "/read"), body: ByteBuffer(string: "abc"))
        #expect(again.head.status == .ok)
        #expect(String(buffer: try await again.body.collect(upTo: 1 << 16)) == "read 3 bytes\n")
        #expect(server.server.connectionCount == 1)
        }
    }

    @Test("a stalled body whose response has begun is cut with RST_STREAM, never ended as complete")
    func stalledAfterHead() async throws {
        try await self.withServer(timeout: .milliseconds(300)) { server, client in
            let stalled = try await client.openStream(request(.post, "/head-first"))
            try await stalled.write(ByteBuffer(string: "0123"))
            let answer = try await stalled.response()
            #expect(answer.head.status == .ok)
            await #expect(throws: HTTP2Error.streamReset(code: HTTP2ErrorCode.cancel)) {
                _ = try await withDeadline(after: .seconds(10)) { try await answer.body.collect(upTo: 1 << 16) }
        }
        #expect(server.readFailures.withLockedValue { $0["/head-first"] } == "\(HTTP2Error.timeout)")
        }
    }

    @Test("an HTTP/2 body that keeps coming, slowly, is read whole: each chunk restarts the wait")
    func slowButSteady() async throws {
        try await self.withServer(timeout: .milliseconds(400)) { server, client in
            let stream = try await client.openStream(request(.post, "/read"))
            // 10 chunks over 1 s: every gap well under the timeout, the whole well over it.
            for digit in 0..<10 {
                try await Task.sleep(for: .milliseconds(100))
                try await stream.write(ByteBuffer(string: "\(digit)"))
        }
        try await stream.finish()
        let answer = try await stream.response()
        #expect(answer.head.status == .ok)
        #expect(String(buffer: try await answer.body.collect(upTo: 1 << 16)) == "read 10 bytes\n")
        #expect(server.readFailures.withLockedValue { $0.isEmpty })
        }
    }
}
