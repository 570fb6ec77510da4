import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

extension HTTP1Tests {
    /// HTTP1ConnectionPool against Python's http.server, a raw socket server, and HTTP1Server.
    @Suite("HTTP/1.1 client")
    struct Client {
        /// The port a child process printed as "port NNNN".
        static func printedPort(_ child: ChildProcess) async throws -> Int {
            let output = try await child.waitForOutput(containing: "port ")
            let digits = output.components(separatedBy: "port ")[1].prefix { $0.isNumber }
            return try #require(Int(digits))
        }

        @Test("GET a file from python3 -m http.server")
        func pythonHTTPServer() async throws {
            let directory = temporaryPath("www")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let pattern = RepeatingPattern(seed: 9)
            var content = pattern.chunk(at: 0, length: 300_000)
            try Data(content.readBytes(length: content.readableBytes)!).write(to: directory.appendingPathComponent("model.bin"))

            let python = try ChildProcess(
                try systemTool("python3"),
                ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", directory.path]
            )
            defer { python.kill() }
            let port = try await Self.printedPort(python)
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
            for _ in 0..<3 {
                let response = try await pool.send(request(.get, "/model.bin"), timeout: .seconds(10))
                #expect(response.head.status == .ok)
                #expect(response.head.headerFields[.contentLength] == "300000")
                let body = try await checkPattern(response.body, pattern)
                #expect(body.count == 300_000 && body.intact)
            }
            let missing = try await pool.send(request(.get, "/nope"), timeout: .seconds(10))
            #expect(missing.head.status == .notFound)
            _ = try await missing.body.collect(upTo: 1 << 20)
            await pool.close()
        }

        @Test("64 MiB streamed up and echoed back through HTTP1Server, with bounded memory")
        func largeStreamedEcho() async throws {
            let total = 64 << 20
            let pattern = RepeatingPattern(seed: 13)
            let server = try await startHTTP1EchoServer()
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            let baseline = ProcessMemory.resident
            ProcessMemory.resetPeak()
            let response = try await pool.send(
                request(.post, "/big"), body: PatternUpload(pattern: pattern, total: total), timeout: .seconds(10))
            #expect(response.head.status == .ok)
            #expect(response.head.headerFields[.transferEncoding] == "chunked")
            let echoed = try await checkPattern(response.body, pattern)
            let growth = ProcessMemory.peak - baseline
            #expect(echoed.count == total)
            #expect(echoed.intact, "the echoed body differs from what was sent")
            // Client and server both live in this process; each side holds at most its watermark
            // (256 KiB) of unread body and a socket's worth of unsent bytes.
            #expect(growth < 16 << 20, "peak memory grew by \(growth >> 20) MiB while echoing 64 MiB")
            await pool.close()
            await server.close()
        }

        @Test("keep-alive: 50 requests reuse one connection; concurrent ones get their own")
        func connectionReuse() async throws {
            let peers = Recorder<Int>()
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                peers.record(request.remoteAddress?.port ?? -1)
                try await echoHandler(request, writer)
            }
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port, maxIdleConnections: 4)
            for index in 0..<50 {
                let method: HTTPRequest.Method = index.isMultiple(of: 2) ? .get : .post
                let response = try await pool.send(
                    request(method, "/n/\(index)"), body: method == .post ? ByteBuffer(string: "b\(index)") : nil)
                let body = String(buffer: try await response.body.collect(upTo: 1 << 10))
                #expect(body == (method == .get ? "/n/\(index)" : "b\(index)"))
            }
            #expect(pool.connectionsOpened == 1)
            #expect(peers.distinct.count == 1)

            // HEAD: no body expected, and the connection stays in step.
            let head = try await pool.send(request(.head, "/h"))
            #expect(head.head.headerFields[.contentLength] == "2")
            #expect(try await head.body.collect(upTo: 1 << 10).readableBytes == 0)

            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        let response = try await pool.send(request(.get, "/c/\(index)"), timeout: .seconds(10))
                        #expect(String(buffer: try await response.body.collect(upTo: 1 << 10)) == "/c/\(index)")
                    }
                }
                try await group.waitForAll()
            }
            #expect(pool.connectionsOpened <= 21)
            await pool.close()
            await server.close()
        }

        @Test("a connection the server closed while idle is not used again")
        func serverClosesIdle() async throws {
            var configuration = HTTP1Configuration()
            configuration.idleTimeout = .milliseconds(100)
            let server = try await startHTTP1EchoServer(configuration: configuration)
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            _ = try await pool.send(request(.get, "/1")).body.collect(upTo: 1 << 10)
            try await Task.sleep(for: .milliseconds(400))
            let again = try await pool.send(request(.post, "/2"), body: ByteBuffer(string: "still works"))
            #expect(String(buffer: try await again.body.collect(upTo: 1 << 10)) == "still works")
            #expect(pool.connectionsOpened == 2)
            await pool.close()
            await server.close()
        }

        @Test("a reused connection closed before any answer: idempotent requests go again, others fail")
        func staleConnectionRetry() async throws {
            // Answers the first request on each connection, then closes on the second without a
            // word: what a keep-alive timeout crossing a new request looks like.
            let script = """
                import socket
                listener = socket.socket()
                listener.bind(("127.0.0.1", 0))
                listener.listen(8)
                print("port", listener.getsockname()[1], flush=True)
                def read_head(connection):
                    data = b""
                    while b"\\r\\n\\r\\n" not in data:
                        chunk = connection.recv(65536)
                        if not chunk:
                            return False
                        data += chunk
                    return True
                while True:
                    connection, _ = listener.accept()
                    if read_head(connection):
                        connection.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
                        read_head(connection)
                    connection.close()
                """
            let python = try ChildProcess(try systemTool("python3"), ["-u", "-c", script])
            defer { python.kill() }
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: try await Self.printedPort(python))
            for _ in 0..<2 {
                let response = try await pool.send(request(.get, "/"), timeout: .seconds(5))
                #expect(String(buffer: try await response.body.collect(upTo: 16)) == "ok")
            }
            #expect(pool.connectionsOpened == 2, "the GET was not sent again on a fresh connection")
            await #expect(throws: HTTP2Error.connectionClosed) {
                _ = try await pool.send(request(.post, "/"), body: ByteBuffer(string: "once"), timeout: .seconds(5))
            }
            #expect(pool.connectionsOpened == 2, "a POST was sent twice")
            await pool.close()
        }

        @Test("a closed port fails with connectFailed")
        func closedPort() async throws {
            let server = try await startHTTP1EchoServer()
            let port = server.port
            await server.close()
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
            do {
                _ = try await pool.send(request(.get, "/"))
                Issue.record("a request to a closed port succeeded")
            } catch let error as HTTP2Error {
                guard case .connectFailed = error else {
                    Issue.record("expected connectFailed, got \(error)")
                    return
                }
                #expect(error.isSafeToRetry)
            }
            await pool.close()
        }

        @Test("a response head that does not come in time fails with timeout")
        func responseTimeout() async throws {
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                try await Task.sleep(for: .seconds(2))
                try await writer.respond(HTTPResponse(status: .ok))
            }
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            let started = Date()
            await #expect(throws: HTTP2Error.timeout) {
                _ = try await pool.send(request(.get, "/slow"), timeout: .milliseconds(200))
            }
            #expect(Date().timeIntervalSince(started) < 1.5)
            await pool.close()
            await server.close()
        }

        @Test("cancelling a caller abandons its request and its connection")
        func cancellation() async throws {
            let started = NIOLockedValueBox(0)
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                started.withLockedValue { $0 += 1 }
                if request.head.path == "/slow" { try await Task.sleep(for: .seconds(5)) }
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "ok"))
            }
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            let task = Task { try await pool.send(request(.get, "/slow")) }
            while started.withLockedValue({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
            task.cancel()
            await #expect(throws: CancellationError.self) { _ = try await task.value }
            let next = try await pool.send(request(.get, "/next"), timeout: .seconds(5))
            #expect(String(buffer: try await next.body.collect(upTo: 1 << 10)) == "ok")
            #expect(pool.connectionsOpened == 2)
            await pool.close()
            await server.close()
        }

        /// A Python server that answers its one request with a head and 1,000 bytes of a longer
        /// body (`framing`: a 100,000-byte `length` or `chunked`), then (`then`) closes, printing
        /// "closed", or prints "sent" and holds the connection until it is killed.
        static func midBodyServer(framing: String, then: String) throws -> ChildProcess {
            let script = """
                import socket, sys, time
                listener = socket.socket()
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                print("port", listener.getsockname()[1], flush=True)
                connection, _ = listener.accept()
                data = b""
                while b"\\r\\n\\r\\n" not in data:
                    data += connection.recv(65536)
                if sys.argv[1] == "chunked":
                    connection.sendall(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n3e8\\r\\n" + b"x" * 1000 + b"\\r\\n")
                else:
                    connection.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n" + b"x" * 1000)
                if sys.argv[2] == "close":
                    connection.close()
                    print("closed", flush=True)
                else:
                    print("sent", flush=True)
                    time.sleep(60)
                """
            return try ChildProcess(try systemTool("python3"), ["-u", "-c", script, framing, then])
        }

        /// GET / from `midBodyServer`, once the server has sent what it sends (and closed, or not).
        static func getFromMidBodyServer(
            framing: String, then: String
        ) async throws -> (ChildProcess, HTTP1ConnectionPool, HTTPClientResponse) {
            let python = try Self.midBodyServer(framing: framing, then: then)
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: try await Self.printedPort(python))
            let response = try await pool.send(request(.get, "/"), timeout: .seconds(5))
            #expect(response.head.status == .ok)
            _ = try await python.waitForOutput(containing: then == "close" ? "closed" : "sent")
            return (python, pool, response)
        }

        @Test("a server killed mid-response fails the body with connectionClosed", arguments: ["length", "chunked"])
        func serverKilledMidResponse(framing: String) async throws {
            let (python, pool, response) = try await Self.getFromMidBodyServer(framing: framing, then: "hold")
            defer { python.kill() }
            var iterator = response.body.makeAsyncIterator()
            var received = 0
            while received < 1000, let chunk = try await iterator.next() { received += chunk.readableBytes }
            #expect(received == 1000)
            python.kill()
            await #expect(throws: HTTP2Error.connectionClosed) {
                while try await iterator.next() != nil {}
            }
            await pool.close()
        }

        @Test(
            "a server that sends part of a body and closes: the bytes it sent are read, then connectionClosed",
            arguments: ["length", "chunked"])
        func serverClosesMidBody(framing: String) async throws {
            // By the time the body is read the close has (almost always) arrived with the bytes:
            // they must not be dropped for it.
            let (python, pool, response) = try await Self.getFromMidBodyServer(framing: framing, then: "close")
            defer { python.kill() }
            var iterator = response.body.makeAsyncIterator()
            var received = 0
            await #expect(throws: HTTP2Error.connectionClosed) {
                while let chunk = try await iterator.next() { received += chunk.readableBytes }
            }
            #expect(received == 1000)
            await pool.close()
        }

        @Test("a handler that throws after the head reaches the client as connectionClosed")
        func truncatedByHandler() async throws {
            struct Boom: Error {}
            let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
                try await writer.writeHead(HTTPResponse(status: .ok))
                try await writer.write(ByteBuffer(string: "some"))
                throw Boom()
            }
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: server.port)
            let response = try await pool.send(request(.get, "/"), timeout: .seconds(5))
            await #expect(throws: HTTP2Error.connectionClosed) {
                _ = try await response.body.collect(upTo: 1 << 10)
            }
            await pool.close()
            await server.close()
        }
    }
}
