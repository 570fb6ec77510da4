import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

/// Streams over real sockets on 127.0.0.1: concurrency, large bodies, flow control.
@Suite("HTTP/2 streaming", .serialized)
struct HTTP2StreamingTests {
    @Test("1,000 concurrent streams on one connection each echo their own body")
    func thousandConcurrentStreams() async throws {
        let server = try await startEchoServer()
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let results = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for index in 0..<1000 {
                group.addTask {
                    let body = "stream \(index): " + String(repeating: "x", count: index % 97)
                    let response = try await client.send(request(.post, "/echo/\(index)"), body: ByteBuffer(string: body))
                    #expect(response.head.status == .ok)
                    let echoed = try await response.body.collect(upTo: 1 << 20)
                    return (index, String(buffer: echoed))
                }
            }
            var results: [Int: String] = [:]
            for try await (index, body) in group { results[index] = body }
            return results
        }
        #expect(results.count == 1000)
        for index in 0..<1000 {
            #expect(results[index] == "stream \(index): " + String(repeating: "x", count: index % 97))
        }
        #expect(server.connectionCount == 1)
        await client.close()
        await server.close()
    }

    @Test("256 MiB streams through an echo server without being held in memory")
    func largeBodyBoundedMemory() async throws {
        let total = 256 << 20
        let chunkSize = 64 << 10
        let pattern = RepeatingPattern(seed: 7)
        let server = try await startEchoServer()
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)

        let baseline = ProcessMemory.resident
        ProcessMemory.resetPeak()
        let stream = try await client.openStream(request(.post, "/big"))
        async let sent: Void = {
            var offset = 0
            while offset < total {
                try await stream.write(pattern.chunk(at: offset, length: chunkSize))
                offset += chunkSize
            }
            try await stream.finish()
        }()
        let response = try await stream.response()
        var received = 0
        var intact = true
        for try await chunk in response.body {
            if intact && !pattern.matches(chunk, at: received) { intact = false }
            received += chunk.readableBytes
        }
        try await sent
        let growth = ProcessMemory.peak - baseline

        #expect(received == total)
        #expect(intact, "the echoed body differs from what was sent")
        // Client and server both live in this process; both directions are bounded by the flow
        // control windows (16 MiB per connection) and the writers' queues, not by the body.
        #expect(growth < 96 << 20, "peak memory grew by \(growth >> 20) MiB while streaming 256 MiB")
        await client.close()
        await server.close()
    }

    @Test("a slow reader holds its writer back through flow control")
    func slowReaderBackpressure() async throws {
        var configuration = HTTP2Configuration()
        configuration.initialStreamWindowSize = 64 << 10
        configuration.connectionWindowSize = 128 << 10
        configuration.outboundBufferHighWatermark = 32 << 10
        let readByServer = NIOLockedValueBox(0)
        let maxAhead = NIOLockedValueBox(0)
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { request, writer in
            for try await chunk in request.body {
                readByServer.withLockedValue { $0 += chunk.readableBytes }
                try await Task.sleep(for: .milliseconds(2))
            }
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "\(readByServer.withLockedValue { $0 })"))
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        let stream = try await client.openStream(request(.post, "/slow"))
        let chunk = ByteBuffer(repeating: 0x61, count: 8 << 10)
        let total = 4 << 20
        var written = 0
        while written < total {
            try await stream.write(chunk)
            written += chunk.readableBytes
            let ahead = written - readByServer.withLockedValue { $0 }
            maxAhead.withLockedValue { $0 = max($0, ahead) }
        }
        try await stream.finish()
        let response = try await stream.response()
        let body = String(buffer: try await response.body.collect(upTo: 1024))
        #expect(body == "\(total)")
        // What the writer may have handed over beyond what the reader took: the peer's stream
        // window, the writer's queue up to its high watermark, and one chunk.
        let bound = configuration.initialStreamWindowSize + configuration.outboundBufferHighWatermark + chunk.readableBytes
        let observed = maxAhead.withLockedValue { $0 }
        #expect(observed <= bound, "the writer ran \(observed) bytes ahead of the reader; flow control allows \(bound)")
        #expect(observed > 0)
        await client.close()
        await server.close()
    }

    @Test("trailers travel both ways after a streamed body")
    func trailers() async throws {
        let server = try await startEchoServer()
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let stream = try await client.openStream(request(.post, "/trailers"))
        try await stream.write(ByteBuffer(string: "body"))
        try await stream.finish(trailers: [HTTPField.Name("x-checksum")!: "abc123"])
        let response = try await stream.response()
        let body = try await response.body.collect(upTo: 1024)
        #expect(String(buffer: body) == "body")
        #expect(response.body.trailers?[HTTPField.Name("x-checksum")!] == "abc123")
        await client.close()
        await server.close()
    }

    @Test("responses are compressed for a ServeWire client that accepts it, and decoded on arrival")
    func compressedResponse() async throws {
        let text = String(repeating: "compressible text ", count: 10_000)
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: text))
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let response = try await client.send(request(.get, "/text"))
        #expect(response.body.contentCoding == .gzip)
        #expect(response.head.headerFields[.contentLength] == String(text.utf8.count))
        #expect(String(buffer: try await response.body.collect(upTo: 1 << 20)) == text)

        // A client with compression off gets the body as it is.
        var off = HTTP2Configuration()
        off.compression.enabled = false
        let plainClient = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port, configuration: off)
        let plain = try await plainClient.send(request(.get, "/text", [.acceptEncoding: "gzip"]))
        #expect(plain.body.contentCoding == nil)
        #expect(plain.head.headerFields[.contentLength] == String(text.utf8.count))
        #expect(String(buffer: try await plain.body.collect(upTo: 1 << 20)) == text)
        await plainClient.close()
        await client.close()
        await server.close()
    }

    @Test("compressed request bodies are decoded for the handler")
    func compressedRequest() async throws {
        var configuration = HTTP2Configuration()
        configuration.compression.compressRequests = true
        let seen = NIOLockedValueBox<ContentCoding?>(nil)
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            seen.withLockedValue { $0 = request.body.contentCoding }
            let body = try await request.body.collect(upTo: 1 << 20)
            try await writer.respond(HTTPResponse(status: .ok), body: body)
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        let text = String(repeating: "0123456789", count: 5_000)
        let response = try await client.send(request(.post, "/upload"), body: ByteBuffer(string: text))
        #expect(String(buffer: try await response.body.collect(upTo: 1 << 20)) == text)
        #expect(seen.withLockedValue { $0 } == .gzip)
        await client.close()
        await server.close()
    }

    @Test("a decompression bomb is refused with 413 and the server keeps serving")
    func decompressionBomb() async throws {
        var configuration = HTTP2Configuration()
        configuration.maxDecompressedBodySize = 1 << 20
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { request, writer in
            let body = try await request.body.collect(upTo: 64 << 20)
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "\(body.readableBytes)"))
        }
        let bomb = try Zlib.compress(ByteBuffer(repeating: 0, count: 32 << 20), coding: .gzip)
        #expect(bomb.readableBytes < 64 << 10)
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let response = try await client.send(request(.post, "/bomb", [.contentEncoding: "gzip"]), body: bomb)
        #expect(response.head.status == .contentTooLarge)
        let message = String(buffer: try await response.body.collect(upTo: 1 << 20))
        #expect(message.contains("limit"), "got: \(message)")

        let small = try Zlib.compress(ByteBuffer(repeating: 0, count: 1000), coding: .gzip)
        let ok = try await client.send(request(.post, "/small", [.contentEncoding: "gzip"]), body: small)
        #expect(ok.head.status == .ok)
        #expect(String(buffer: try await ok.body.collect(upTo: 100)) == "1000")

        let unknown = try await client.send(request(.post, "/br", [.contentEncoding: "br"]), body: ByteBuffer(string: "x"))
        #expect(unknown.head.status == .unsupportedMediaType)
        await client.close()
        await server.close()
    }
}
