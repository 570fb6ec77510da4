import Foundation
import HTTPTypes
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

/// ServeWire against an independent HTTP/2 implementation: nghttp2's own tools (nghttp,
/// h2load, nghttpd), which share the library but not our use of it.
@Suite("HTTP/2 interoperability", .serialized)
struct HTTP2InteropTests {
    @Test("nghttp sends a body to the ServeWire server and gets it back, trailers included")
    func nghttpClient() async throws {
        let server = try await startEchoServer()
        let bodyURL = FileManager.default.temporaryDirectory.appendingPathComponent("interop-\(UUID().uuidString).bin")
        let pattern = RepeatingPattern(seed: 3)
        let body = pattern.chunk(at: 0, length: 3 << 20)
        try Data(body.readableBytesView).write(to: bodyURL)
        defer { try? FileManager.default.removeItem(at: bodyURL) }

        let (status, output) = try await run(
            try systemTool("nghttp"),
            ["-v", "-d", bodyURL.path, "--trailer", "x-sum: 42", "http://127.0.0.1:\(server.port)/upload"]
        )
        #expect(status == 0, "nghttp failed:\n\(output)")
        #expect(output.contains(":status: 200"))
        #expect(output.contains("x-sum: 42"), "the echoed trailer is missing")

        let (getStatus, getOutput) = try await run(try systemTool("nghttp"), ["http://127.0.0.1:\(server.port)/some/path"])
        #expect(getStatus == 0)
        #expect(getOutput == "/some/path")
        await server.close()
    }

    @Test("nghttp asking for gzip gets the body as the handler wrote it: compression is between ServeWire peers only")
    func nghttpCompression() async throws {
        let text = String(repeating: "interop ", count: 4096)
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { _, writer in
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: text))
        }
        let (status, output) = try await run(
            try systemTool("nghttp"),
            ["-v", "-H", "accept-encoding: gzip", "http://127.0.0.1:\(server.port)/"]
        )
        #expect(status == 0, "nghttp failed:\n\(output)")
        #expect(!output.contains("content-encoding"))
        #expect(output.contains("content-length: \(text.utf8.count)"))
        await server.close()
    }

    @Test("h2load drives 20,000 requests over 4 connections × 50 streams, all succeed")
    func h2load() async throws {
        let server = try await startEchoServer()
        let (status, output) = try await run(
            try systemTool("h2load"),
            ["-n", "20000", "-c", "4", "-m", "50", "http://127.0.0.1:\(server.port)/bench"],
            timeout: 120
        )
        #expect(status == 0, "h2load failed:\n\(output)")
        #expect(output.contains("20000 succeeded, 0 failed, 0 errored, 0 timeout"), "h2load said:\n\(output)")
        #expect(output.contains("status codes: 20000 2xx"))
        await server.close()
    }

    @Test("the ServeWire client fetches files from nghttpd, concurrently and in full")
    func clientAgainstNghttpd() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("nghttpd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        let pattern = RepeatingPattern(seed: 11)
        let sizes = [0, 1, 16_384, 100_000, 8 << 20]
        for size in sizes {
            try Data(pattern.chunk(at: 0, length: size).readableBytesView).write(to: root.appendingPathComponent("f\(size)"))
        }
        let port = try await freePort()
        let nghttpd = try ChildProcess(try systemTool("nghttpd"), ["--no-tls", "-d", root.path, "-a", "127.0.0.1", String(port)])
        defer { nghttpd.kill() }  // nghttpd ignores SIGTERM
        let client = try await connectWithRetry(port: port, child: nghttpd)

        try await withThrowingTaskGroup(of: Void.self) { group in
            for size in sizes {
                for _ in 0..<4 {
                    group.addTask {
                        let response = try await client.send(request(.get, "/f\(size)"))
                        #expect(response.head.status == .ok)
                        var received = 0
                        for try await chunk in response.body {
                            #expect(pattern.matches(chunk, at: received))
                            received += chunk.readableBytes
                        }
                        #expect(received == size)
                    }
                }
            }
            try await group.waitForAll()
        }
        let missing = try await client.send(request(.get, "/nope"))
        #expect(missing.head.status == .notFound)
        await client.close()
    }

    private func freePort() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        return port
    }

    private func connectWithRetry(port: Int, child: ChildProcess) async throws -> HTTP2ClientConnection {
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            do {
                return try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: port)
            } catch {
                if ContinuousClock.now > deadline || !child.process.isRunning {
                    throw TestFailure("could not reach nghttpd on \(port): \(error)\n\(child.output)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}
