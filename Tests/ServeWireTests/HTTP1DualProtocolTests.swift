import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

extension HTTP1Tests {
    /// HTTPServer: HTTP/1.1 and h2c (prior knowledge) on one port, one handler.
    @Suite("HTTP/1.1 and HTTP/2 on one port")
    struct DualProtocol {
        @Test("one handler answers curl --http1.1 and curl --http2-prior-knowledge on one port")
        func bothProtocols() async throws {
            let kinds = Recorder<String>()
            let server = try await HTTPServer.bind(host: "127.0.0.1", port: 0) { request, writer in
                kinds.record(writer is HTTP1ResponseWriter ? "1" : writer is HTTP2ResponseWriter ? "2" : "?")
                try await echoHandler(request, writer)
            }
            let url = "http://127.0.0.1:\(server.port)/same/handler"
            let http1 = try await curl(["--http1.1", "-w", " %{http_version}", url])
            #expect(http1.output == "/same/handler 1.1", "\(http1.output)")
            let http2 = try await curl(["--http2-prior-knowledge", "-w", " %{http_version}", url])
            #expect(http2.output == "/same/handler 2", "\(http2.output)")
            let posted = try await curl(["--http2-prior-knowledge", "--data-binary", "h2 body", "\(url)/post"])
            #expect(posted.output == "h2 body")
            #expect(kinds.all == ["1", "2", "2"])

            // ServeWire's own clients, both kinds, on the same port.
            let h2 = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
            let viaH2 = try await h2.send(request(.post, "/x"), body: ByteBuffer(string: "over h2"), timeout: .seconds(5))
            #expect(String(buffer: try await viaH2.body.collect(upTo: 1 << 10)) == "over h2")
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            let viaH1 = try await pool.send(request(.post, "/x"), body: ByteBuffer(string: "over h1"), timeout: .seconds(5))
            #expect(String(buffer: try await viaH1.body.collect(upTo: 1 << 10)) == "over h1")
            await h2.close()
            await pool.close()
            await server.close()
        }

        @Test("a preface split across reads still starts HTTP/2; 'P' alone waits, 'PUT' does not")
        func splitPreface() async throws {
            let server = try await HTTPServer.bind(host: "127.0.0.1", port: 0) { request, writer in
                try await echoHandler(request, writer)
            }
            // An HTTP/1 request beginning like the preface ("P", "PU") decides at the first byte
            // that differs.
            let raw = try await RawConnection.connect(port: server.port)
            try await raw.send("P")
            try await Task.sleep(for: .milliseconds(30))
            try await raw.send("UT /put HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
            let answer = try await raw.wait { $0.hasSuffix("ok\r\n0\r\n\r\n") }
            #expect(answer.hasPrefix("HTTP/1.1 200"))
            await raw.close()

            // The preface in two pieces: the server answers with its SETTINGS frame (type 0x4).
            let h2 = try await RawConnection.connect(port: server.port)
            try await h2.send("PRI * HTTP/2.0\r\n")
            try await Task.sleep(for: .milliseconds(30))
            #expect(h2.received.withLockedValue { $0.isEmpty })
            try await h2.send("\r\nSM\r\n\r\n")
            try await h2.wait(bytes: 9)
            #expect(h2.received.withLockedValue { $0[3] } == 0x4)
            await h2.close()
            await server.close()
        }

        @Test("64 MiB streamed through HTTPServer by curl over h2c, with bounded memory")
        func largeH2cUpload() async throws {
            let total = 64 << 20
            let pattern = RepeatingPattern(seed: 21)
            let input = try writePatternFile(pattern, total: total)
            let output = temporaryPath("h2c-out")
            defer {
                try? FileManager.default.removeItem(at: input)
                try? FileManager.default.removeItem(at: output)
            }
            let server = try await HTTPServer.bind(host: "127.0.0.1", port: 0) { request, writer in
                try await echoHandler(request, writer)
            }
            let baseline = ProcessMemory.resident
            ProcessMemory.resetPeak()
            let result = try await curl([
                "--http2-prior-knowledge", "-T", input.path, "-X", "POST", "-o", output.path,
                "-w", "%{http_code} %{http_version}", "http://127.0.0.1:\(server.port)/big",
            ])
            let growth = ProcessMemory.peak - baseline
            #expect(result.output == "200 2", "\(result.output)")
            let echoed = try fileMatchesPattern(output, pattern)
            #expect(echoed.count == total)
            #expect(echoed.intact, "the echoed body differs from what was sent")
            // The server buffers at most its HTTP/2 receive window (16 MiB) and its send queue.
            #expect(growth < 40 << 20, "peak memory grew by \(growth >> 20) MiB while echoing 64 MiB")
            await server.close()
        }

        @Test("shutdown covers both protocols: idle connections close, requests in progress finish")
        func shutdownBoth() async throws {
            let server = try await HTTPServer.bind(host: "127.0.0.1", port: 0) { request, writer in
                if request.head.path == "/slow" { try await Task.sleep(for: .milliseconds(300)) }
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "done"))
            }
            let h2 = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
            _ = try await h2.send(request(.get, "/warm")).body.collect(upTo: 1 << 10)
            let h1 = try await RawConnection.connect(port: server.port)
            try await h1.send("GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            _ = try await h1.wait { $0.hasSuffix("done") }
            let undecided = try await RawConnection.connect(port: server.port)
            let slowH2 = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
            async let slowH2Response = slowH2.send(request(.get, "/slow")).body.collect(upTo: 1 << 10)
            let slowH1 = try await RawConnection.connect(port: server.port)
            try await slowH1.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            try await Task.sleep(for: .milliseconds(50))
            #expect(server.connectionCount == 5)

            let started = Date()
            await server.shutdown(gracePeriod: .seconds(5))
            #expect(Date().timeIntervalSince(started) < 3)
            #expect(String(buffer: try await slowH2Response) == "done")
            try await slowH1.waitForClose()
            #expect(slowH1.text.hasSuffix("done"))
            try await h1.waitForClose()
            try await undecided.waitForClose()
            try await h2.closeFuture.get()
            #expect(server.connectionCount == 0)
        }
    }
}
