import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

extension HTTP1Tests {
    /// HTTP1Server over real sockets on 127.0.0.1, checked with curl and raw bytes.
    @Suite("HTTP/1.1 server")
    struct Server {
        @Test("100 sequential requests share one keep-alive connection")
        func keepAlive() async throws {
            let peers = Recorder<Int>()
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                peers.record(request.remoteAddress?.port ?? -1)
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: (request.head.path ?? "") + "\n"))
            }
            let urls = (0..<100).map { "http://127.0.0.1:\(server.port)/r/\($0)" }
            let result = try await curl(["--http1.1", "-w", "%{num_connects}\n"] + urls)
            #expect(result.status == 0, "\(result.output)")
            let lines = result.output.split(separator: "\n").map(String.init)
            // Each URL prints its body, then how many connections curl opened for it.
            let bodies = stride(from: 0, to: lines.count, by: 2).map { lines[$0] }
            let connects = stride(from: 1, to: lines.count, by: 2).compactMap { Int(lines[$0]) }
            #expect(bodies == (0..<100).map { "/r/\($0)" })
            #expect(connects.reduce(0, +) == 1, "curl opened \(connects.reduce(0, +)) connections")
            #expect(peers.all.count == 100)
            #expect(peers.distinct.count == 1, "requests came over \(peers.distinct.count) connections")
            await server.close()
        }

        @Test("Connection: close is honoured, and the response says so")
        func connectionClose() async throws {
            let server = try await startHTTP1EchoServer()
            let raw = try await RawConnection.connect(port: server.port)
            try await raw.send("GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try await raw.waitForClose()
            let text = raw.text.lowercased()
            #expect(text.hasPrefix("http/1.1 200"))
            #expect(text.contains("connection: close"))
            #expect(text.hasSuffix("\r\n\r\n/bye"))
            await server.close()
        }

        @Test("malformed requests get 400 and the server keeps serving")
        func malformedRequest() async throws {
            let server = try await startHTTP1EchoServer()
            for garbage in [
                "GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", "GET / HTTP/9.9x\r\n\r\n",
            ] {
                let raw = try await RawConnection.connect(port: server.port)
                try await raw.send(garbage)
                try await raw.waitForClose()
                #expect(raw.text.hasPrefix("HTTP/1.1 400"), "\(garbage.debugDescription) got \(raw.text.debugDescription)")
            }
            // An oversized head is refused the same way.
            var configuration = HTTP1Configuration()
            configuration.maxHeaderBytes = 1024
            let strict = try await startHTTP1EchoServer(configuration: configuration)
            let raw = try await RawConnection.connect(port: strict.port)
            try await raw.send("GET / HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 4096))\r\n\r\n")
            try await raw.waitForClose()
            #expect(raw.text.hasPrefix("HTTP/1.1 400"))

            let result = try await curl(["--http1.1", "http://127.0.0.1:\(server.port)/still-here"])
            #expect(result.output == "/still-here")
            await server.close()
            await strict.close()
        }

        @Test("pipelined requests are answered in order on one connection")
        func pipelining() async throws {
            let server = try await startHTTP1EchoServer()
            let raw = try await RawConnection.connect(port: server.port)
            try await raw.send(
                "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                    + "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                    + "GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            let text = try await raw.wait { $0.hasSuffix("/three") }
            let one = try #require(text.range(of: "/one"))
            let two = try #require(text.range(of: "abc"))
            #expect(one.upperBound <= two.lowerBound)
            #expect(text.components(separatedBy: "HTTP/1.1 200").count == 4)
            await raw.close()
            await server.close()
        }

        @Test("Expect: 100-continue gets 100 Continue once the handler reads the body, and none when it refuses first")
        func expectContinue() async throws {
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                if request.head.path == "/refuse" {
                    try await writer.respond(HTTPResponse(status: .contentTooLarge), body: ByteBuffer(string: "no thanks"))
                    return
                }
                try await echoHandler(request, writer)
            }
            let pattern = RepeatingPattern(seed: 11)
            let input = try writePatternFile(pattern, total: 3 << 20)
            let output = temporaryPath("expect-out")
            defer {
                try? FileManager.default.removeItem(at: input)
                try? FileManager.default.removeItem(at: output)
            }
            let started = Date()
            // With a 20 s expect timeout, the upload finishing fast shows curl got its 100 Continue.
            let accepted = try await curl([
                "--http1.1", "-v", "--expect100-timeout", "20", "-H", "Expect: 100-continue",
                "--data-binary", "@\(input.path)", "-o", output.path, "http://127.0.0.1:\(server.port)/echo",
            ])
            #expect(accepted.status == 0, "\(accepted.output)")
            #expect(accepted.output.contains("HTTP/1.1 100 Continue"))
            #expect(Date().timeIntervalSince(started) < 10)
            let echoed = try fileMatchesPattern(output, pattern)
            #expect(echoed.count == 3 << 20 && echoed.intact)

            let refused = try await curl([
                "--http1.1", "-v", "--expect100-timeout", "20", "-H", "Expect: 100-continue",
                "--data-binary", "@\(input.path)", "http://127.0.0.1:\(server.port)/refuse",
            ])
            #expect(refused.output.contains("HTTP/1.1 413"))
            #expect(!refused.output.contains("100 Continue"))
            #expect(refused.output.contains("no thanks"))
            await server.close()
        }

        @Test("a response without content-length is chunked; HEAD gets the head alone")
        func chunkedAndHead() async throws {
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                if request.head.path == "/chunks" {
                    try await writer.writeHead(HTTPResponse(status: .ok))
                    for word in ["alpha ", "beta ", "gamma"] { try await writer.write(ByteBuffer(string: word)) }
                    try await writer.finish()
                } else {
                    try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "hello, head"))
                }
            }
            let raw = try await RawConnection.connect(port: server.port)
            try await raw.send("GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n")
            let chunked = try await raw.wait { $0.hasSuffix("0\r\n\r\n") }
            #expect(chunked.lowercased().contains("transfer-encoding: chunked"))
            #expect(chunked.hasSuffix("\r\n\r\n6\r\nalpha \r\n5\r\nbeta \r\n5\r\ngamma\r\n0\r\n\r\n"))
            _ = raw.take()

            // HEAD: the GET's content-length, no body; the next response on the connection is intact.
            try await raw.send("HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n")
            let head = try await raw.wait { $0.hasSuffix("\r\n\r\n") }
            #expect(head.lowercased().contains("content-length: 11"))
            try await Task.sleep(for: .milliseconds(50))
            #expect(raw.take() == head, "a HEAD response carried a body")
            // HEAD on a streamed (chunked) response: no chunks either.
            try await raw.send("HEAD /chunks HTTP/1.1\r\nHost: x\r\n\r\nGET /page HTTP/1.1\r\nHost: x\r\n\r\n")
            let both = try await raw.wait { $0.hasSuffix("hello, head") }
            #expect(both.components(separatedBy: "HTTP/1.1 200").count == 3)
            #expect(!both.contains("alpha"))

            let viaCurl = try await curl(["--http1.1", "http://127.0.0.1:\(server.port)/chunks"])
            #expect(viaCurl.output == "alpha beta gamma")
            await raw.close()
            await server.close()
        }

        @Test("handlers that fail: 500 before the head, a truncated body after it, 500 when nothing was sent")
        func handlerFailures() async throws {
            struct Boom: Error {}
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                switch request.head.path {
                case "/before":
                    throw Boom()
                case "/after":
                    try await writer.writeHead(HTTPResponse(status: .ok))
                    try await writer.write(ByteBuffer(string: "partial"))
                    throw Boom()
                case "/after-length":
                    try await writer.writeHead(HTTPResponse(status: .ok, headerFields: [.contentLength: "100"]))
                    try await writer.write(ByteBuffer(string: "partial"))
                    throw Boom()
                case "/silent":
                    return
                default:
                    try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "fine"))
                }
            }
            let base = "http://127.0.0.1:\(server.port)"
            let before = try await curl(["--http1.1", "-w", " %{http_code}", "\(base)/before"])
            #expect(before.output.hasPrefix("internal error"))
            #expect(before.output.hasSuffix(" 500"))
            let silent = try await curl(["--http1.1", "-w", " %{http_code}", "\(base)/silent"])
            #expect(silent.output.hasSuffix(" 500"))
            #expect(silent.output.contains("without a response"))
            for path in ["/after", "/after-length"] {
                let after = try await curl(["--http1.1", "\(base)\(path)"])
                #expect(after.status != 0, "curl took a truncated body for a complete one: \(after.output)")
                #expect(after.output.contains("partial"))
            }
            // The server is unharmed.
            #expect(try await curl(["--http1.1", "\(base)/ok"]).output == "fine")
            await server.close()
        }

        @Test("an unread request body is drained for keep-alive, or the connection closes when it is large")
        func unreadBodies() async throws {
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                try await writer.respond(HTTPResponse(status: .accepted), body: ByteBuffer(string: "ignored your body"))
            }
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            let pattern = RepeatingPattern(seed: 3)
            let small = try await pool.send(request(.post, "/small"), body: pattern.chunk(at: 0, length: 100_000))
            #expect(small.head.status == .accepted)
            #expect(String(buffer: try await small.body.collect(upTo: 1 << 10)) == "ignored your body")
            let next = try await pool.send(request(.get, "/next"))
            #expect(next.head.status == .accepted)
            _ = try await next.body.collect(upTo: 1 << 10)
            #expect(pool.connectionsOpened == 1, "the drained connection was not reused")

            // 8 MiB unread: the server answers, then closes rather than reading it all.
            let large = try await pool.send(request(.post, "/large"), body: pattern.chunk(at: 0, length: 8 << 20))
            #expect(large.head.status == .accepted)
            #expect(large.head.headerFields[.connection]?.lowercased() == "close")
            _ = try await large.body.collect(upTo: 1 << 10)
            let after = try await pool.send(request(.get, "/after"))
            #expect(after.head.status == .accepted)
            _ = try await after.body.collect(upTo: 1 << 10)
            #expect(pool.connectionsOpened == 2)
            await pool.close()
            await server.close()
        }

        @Test("a chunked body read in part is drained, and the connection carries the next request")
        func partlyReadChunkedBody() async throws {
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                var iterator = request.body.makeAsyncIterator()
                let first = try await iterator.next()
                try await writer.respond(
                    HTTPResponse(status: .ok), body: ByteBuffer(string: "first \(first?.readableBytes ?? 0)"))
            }
            let raw = try await RawConnection.connect(port: server.port)
            let chunk = String(repeating: "z", count: 1000)
            var body = ""
            for _ in 0..<50 { body += "3e8\r\n\(chunk)\r\n" }
            try await raw.send("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body + "0\r\n\r\n")
            try await raw.send("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            let text = try await raw.wait { $0.components(separatedBy: "HTTP/1.1 200").count == 3 && $0.hasSuffix("first 5") }
            #expect(!text.lowercased().contains("connection: close"))
            #expect(raw.channel.isActive)
            await raw.close()
            await server.close()
        }

        @Test("an HTTP/1.0 client asking for keep-alive gets it")
        func http10KeepAlive() async throws {
            let server = try await startHTTP1EchoServer()
            let raw = try await RawConnection.connect(port: server.port)
            try await raw.send("GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            let first = try await raw.wait { $0.hasSuffix("/ten") }
            #expect(first.hasPrefix("HTTP/1.0 200"))
            #expect(first.lowercased().contains("connection: keep-alive"))
            _ = raw.take()
            try await raw.send("GET /again HTTP/1.0\r\n\r\n")
            _ = try await raw.wait { $0.hasSuffix("/again") }
            try await raw.waitForClose()
            await server.close()
        }

        @Test("a slow handler holds the upload back: reading stops at the watermark")
        func uploadBackpressure() async throws {
            let gate = NIOLockedValueBox<CheckedContinuation<Void, Never>?>(nil)
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                await withCheckedContinuation { continuation in gate.withLockedValue { $0 = continuation } }
                try await echoHandler(request, writer)
            }
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            let pattern = RepeatingPattern(seed: 5)
            let total = 64 << 20
            let produced = NIOLockedValueBox(0)
            let upload = PatternUpload(pattern: pattern, total: total, produced: produced)
            async let response = pool.send(request(.post, "/slow"), body: upload)
            // The handler reads nothing for a while: the upload must stall at the server's
            // watermark plus what the kernel's socket buffers hold, far below the body.
            try await Task.sleep(for: .milliseconds(700))
            let stalledAt = produced.withLockedValue { $0 }
            #expect(stalledAt < 24 << 20, "\(stalledAt >> 20) MiB of 64 went out while the handler read nothing")
            gate.withLockedValue {
                $0?.resume()
                $0 = nil
            }
            let echoed = try await checkPattern(try await response.body, pattern)
            #expect(echoed.count == total)
            #expect(echoed.intact)
            await pool.close()
            await server.close()
        }

        @Test("shutdown closes idle connections at once and lets a request in progress finish")
        func gracefulShutdown() async throws {
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                if request.head.path == "/slow" { try await Task.sleep(for: .milliseconds(300)) }
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "done"))
            }
            let idle = try await RawConnection.connect(port: server.port)
            try await idle.send("GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            _ = try await idle.wait { $0.hasSuffix("done") }
            let busy = try await RawConnection.connect(port: server.port)
            try await busy.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            try await Task.sleep(for: .milliseconds(50))
            let started = Date()
            await server.shutdown(gracePeriod: .seconds(5))
            #expect(Date().timeIntervalSince(started) < 3)
            #expect(!idle.channel.isActive)
            try await busy.waitForClose()
            #expect(busy.text.hasSuffix("done"))
            #expect(busy.text.lowercased().contains("connection: close"))
            #expect(server.connectionCount == 0)
        }

        @Test("an idle keep-alive connection is closed after idleTimeout")
        func idleTimeout() async throws {
            var configuration = HTTP1Configuration()
            configuration.idleTimeout = .milliseconds(200)
            let server = try await startHTTP1EchoServer(configuration: configuration)
            let raw = try await RawConnection.connect(port: server.port)
            try await raw.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            _ = try await raw.wait { $0.hasSuffix("/a") }
            try await raw.waitForClose(timeout: 3)
            await server.close()
        }

        @Test("the request head: method, target, authority from Host, every field; HTTP/1.0 gets HTTP/1.0")
        func requestHead() async throws {
            let seen = NIOLockedValueBox<HTTPRequest?>(nil)
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                seen.withLockedValue { $0 = request.head }
                try await writer.writeHead(HTTPResponse(status: .ok))
                try await writer.write(ByteBuffer(string: "streamed"))
                try await writer.finish()
            }
            let raw = try await RawConnection.connect(port: server.port)
            try await raw.send("PATCH /p?q=1 HTTP/1.0\r\nHost: example.test:81\r\nX-One: 1\r\nX-One: 2\r\n\r\n")
            try await raw.waitForClose()
            let head = try #require(seen.withLockedValue { $0 })
            #expect(head.method == .patch)
            #expect(head.path == "/p?q=1")
            #expect(head.authority == "example.test:81")
            #expect(head.scheme == "http")
            #expect(head.headerFields[values: HTTPField.Name("x-one")!] == ["1", "2"])
            // No chunked coding for HTTP/1.0: the body ends with the connection.
            #expect(raw.text.hasPrefix("HTTP/1.0 200"))
            #expect(!raw.text.lowercased().contains("chunked"))
            #expect(raw.text.hasSuffix("\r\n\r\nstreamed"))
            await server.close()
        }
    }
}
