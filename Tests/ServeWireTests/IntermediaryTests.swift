import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import ServeWire

/// The parts of ServeWire a proxy stands on (DESIGN.md, "The proxy is a faithful HTTP
/// intermediary"): what a request's framing says about its body, header values as bytes, and
/// compression that stays between ServeWire peers.
@Suite("ServeWire for intermediaries")
struct IntermediaryTests {
    @Test("header values are bytes: 0xE9 passes unchanged both ways over HTTP/2")
    func headerValueBytes() async throws {
        let name = HTTPField.Name("x-name")!
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            var fields = HTTPFields()
            for field in request.head.headerFields where field.name == name { fields.append(field) }
            try await writer.respond(HTTPResponse(status: .ok, headerFields: fields), body: nil)
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let latin1: [UInt8] = Array("caf".utf8) + [0xE9, 0x20, 0xFF]
        var fields = HTTPFields()
        fields.append(HTTPField(name: name, lenientValue: latin1))
        let response = try await client.send(request(.get, "/", fields))
        let echoed = response.head.headerFields.first { $0.name == name }
        #expect(echoed?.withUnsafeBytesOfValue { Array($0) } == latin1)
        await client.close()
        await server.close()
    }

    @Test("a request's framing says whether it has a body: END_STREAM over HTTP/2, content-length or chunked over HTTP/1.1")
    func requestHasBody() async throws {
        let seen = Recorder<String>()
        let handler: @Sendable (HTTPServerRequest, any HTTPResponseWriter) async throws -> Void = { request, writer in
            let body = try await request.body.collect(upTo: 1 << 20)
            seen.record("\(request.head.path ?? "") \(request.hasBody) \(body.readableBytes)")
            try await writer.respond(HTTPResponse(status: .ok), body: nil)
        }
        let h2 = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { try await handler($0, $1) }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: h2.port)
        _ = try await client.send(request(.get, "/h2-get"))
        // A body without a content-length, as curl -T - and httpx send them.
        let stream = try await client.openStream(request(.post, "/h2-post"))
        try await stream.write(ByteBuffer(string: "abc"))
        try await stream.finish()
        _ = try await stream.response()
        let empty = try await client.openStream(request(.post, "/h2-empty"))
        try await empty.finish()
        _ = try await empty.response()
        await client.close()
        await h2.close()

        let h1 = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { try await handler($0, $1) }
        for arguments in [
            ["http://127.0.0.1:\(h1.port)/h1-get"],
            ["-d", "abc", "http://127.0.0.1:\(h1.port)/h1-length"],
            ["-H", "transfer-encoding: chunked", "-d", "abc", "http://127.0.0.1:\(h1.port)/h1-chunked"],
        ] {
            let result = try await curl(["--http1.1", "-o", "/dev/null"] + arguments)
            #expect(result.status == 0, "\(result.output)")
        }
        await h1.close()
        #expect(
            Set(seen.all) == [
                "/h2-get false 0", "/h2-post true 3", "/h2-empty true 0", "/h1-get false 0", "/h1-length true 3",
                "/h1-chunked true 3",
            ])
    }

    @Test("compression between ServeWire peers is invisible to both ends: content-length back, no content-encoding or vary added, a handler's own gzip passed on undecoded")
    func hopCompressionIsInvisible() async throws {
        let text = String(repeating: "compressible text ", count: 5_000)
        let gzipped = try Zlib.compress(ByteBuffer(string: "already gzip ".repeated(500)), coding: .gzip)
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            switch request.head.path {
            case "/gz":
                try await writer.respond(
                    HTTPResponse(status: .ok, headerFields: [.contentEncoding: "gzip", .contentType: "text/plain"]), body: gzipped)
            case "/stream":
                try await writer.writeHead(HTTPResponse(status: .ok, headerFields: [.contentLength: String(text.utf8.count)]))
                try await writer.write(ByteBuffer(string: text))
                try await writer.finish()
            default:
                try await writer.respond(
                    HTTPResponse(status: .ok, headerFields: [.contentLength: String(text.utf8.count)]),
                    body: request.head.method == .head ? nil : ByteBuffer(string: text))
            }
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        for path in ["/text", "/stream"] {
            let response = try await client.send(request(.get, path, [.acceptEncoding: "gzip"]))
            #expect(response.head.headerFields[.contentLength] == String(text.utf8.count), "\(path)")
            #expect(response.head.headerFields[.contentEncoding] == nil, "\(path)")
            #expect(response.head.headerFields[.vary] == nil, "\(path)")
            #expect(response.head.headerFields[ServeHeaders.hopCoding] == nil)
            #expect(String(buffer: try await response.body.collect(upTo: 1 << 20)) == text)
        }
        let head = try await client.send(request(.head, "/text"))
        #expect(head.head.headerFields[.contentLength] == String(text.utf8.count))
        #expect(try await head.body.collect(upTo: 1 << 20).readableBytes == 0)
        let gz = try await client.send(request(.get, "/gz", [.acceptEncoding: "gzip"]))
        #expect(gz.head.headerFields[.contentEncoding] == "gzip")
        #expect(gz.head.headerFields[.contentLength] == String(gzipped.readableBytes))
        #expect(try await gz.body.collect(upTo: 1 << 20) == gzipped)
        await client.close()

        // On the wire the hop was compressed, and only because the client asked for it in its
        // own field: nghttp shows what travelled.
        let (_, asked) = try await run(
            try systemTool("nghttp"), ["-v", "-H", "serve-accept-hop-coding: gzip", "http://127.0.0.1:\(server.port)/text"])
        #expect(asked.contains("serve-hop-coding: gzip"), "\(asked.prefix(2000))")
        let (_, plain) = try await run(
            try systemTool("nghttp"), ["-v", "-H", "accept-encoding: gzip", "http://127.0.0.1:\(server.port)/text"])
        #expect(!plain.contains("content-encoding"), "\(plain.prefix(2000))")
        #expect(plain.contains("content-length: \(text.utf8.count)"))
        await server.close()
    }

    @Test("an HTTP/2 response that ends short of its content-length is reset, never ended cleanly")
    func shortBodyIsReset() async throws {
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { _, writer in
            try await writer.writeHead(HTTPResponse(status: .ok, headerFields: [.contentLength: "100"]))
            try await writer.write(ByteBuffer(string: "only ten b"))
            try await writer.finish()
        }
        // nghttp checks content-length itself, so the frames are what tell: RST_STREAM, and no
        // DATA frame with END_STREAM.
        let (_, output) = try await run(try systemTool("nghttp"), ["-v", "http://127.0.0.1:\(server.port)/"])
        let lines = output.split(separator: "\n")
        let endedByServer = lines.indices.dropLast().filter { lines[$0].contains(" recv ") && lines[$0 + 1].contains("; END_STREAM") }
        #expect(output.contains("recv RST_STREAM"), "\(output)")
        #expect(endedByServer.isEmpty, "\(output)")
        await server.close()
    }

    @Test("hop-by-hop fields never cross an HTTP/2 hop: Connection and what it names, TE other than trailers")
    func hopByHopFields() async throws {
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            var fields = HTTPFields()
            fields[HTTPField.Name("x-saw-te")!] = request.head.headerFields[.te] ?? "none"
            fields[.connection] = "close, x-hop"
            fields[HTTPField.Name("x-hop")!] = "1"
            fields[HTTPField.Name("x-end-to-end")!] = "2"
            try await writer.respond(HTTPResponse(status: .ok, headerFields: fields), body: nil)
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        // nghttp2 resets a stream whose te is not "trailers" (RFC 9113 §8.2.2): it must not go out.
        let response = try await client.send(request(.get, "/", [.te: "gzip"]), timeout: .seconds(10))
        #expect(response.head.status == .ok)
        #expect(response.head.headerFields[HTTPField.Name("x-saw-te")!] == "none")
        #expect(response.head.headerFields[HTTPField.Name("x-hop")!] == nil)
        #expect(response.head.headerFields[.connection] == nil)
        #expect(response.head.headerFields[HTTPField.Name("x-end-to-end")!] == "2")
        let trailers = try await client.send(request(.get, "/", [.te: "trailers"]), timeout: .seconds(10))
        #expect(trailers.head.headerFields[HTTPField.Name("x-saw-te")!] == "trailers")
        await client.close()
        await server.close()
    }

    @Test("the HTTP/1.1 server decodes content-coded request bodies as the HTTP/2 server does: gzip read decoded, a corrupt one 400, an unknown coding 415")
    func http1RequestDecoding() async throws {
        let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            let body = try await request.body.collect(upTo: 1 << 20)
            var fields = HTTPFields()
            fields[HTTPField.Name("x-saw-encoding")!] = request.head.headerFields[.contentEncoding] ?? "none"
            try await writer.respond(HTTPResponse(status: .ok, headerFields: fields), body: body)
        }
        let file = temporaryPath("body.gz")
        defer { try? FileManager.default.removeItem(at: file) }
        let zipped = try Zlib.compress(ByteBuffer(string: "decoded for the handler"), coding: .gzip)
        try Data(zipped.readableBytesView).write(to: file)
        let url = "http://127.0.0.1:\(server.port)/"
        let good = try await curl(["-i", "-H", "content-encoding: gzip", "--data-binary", "@\(file.path)", url])
        #expect(good.output.hasPrefix("HTTP/1.1 200"), "\(good.output)")
        #expect(good.output.contains("x-saw-encoding: none"))
        #expect(good.output.hasSuffix("decoded for the handler"), "\(good.output)")
        let corrupt = try await curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "content-encoding: gzip", "-d", "plain", url])
        #expect(corrupt.output == "400")
        let unknown = try await curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "content-encoding: br", "-d", "x", url])
        #expect(unknown.output == "415")
        await server.close()
    }

    @Test(arguments: [
        ("http://h:8000/e/x?q=1", "h:8000", "/e/x?q=1"),
        ("HTTP://h", "h", "/"),
        ("http://h?q", "h", "/?q"),
        ("https://[::1]:8443/p", "[::1]:8443", "/p"),
    ])
    func absoluteFormTargets(target: String, authority: String, path: String) {
        let parsed = HTTP1ServerConnection.absoluteForm(target)
        #expect(parsed?.authority == authority)
        #expect(parsed?.path == path)
    }

    @Test func originFormIsNotAbsolute() {
        #expect(HTTP1ServerConnection.absoluteForm("/e/x") == nil)
        #expect(HTTP1ServerConnection.absoluteForm("/redirect?to=http://x") == nil)
        #expect(HTTP1ServerConnection.absoluteForm("*") == nil)
    }
}

extension String {
    fileprivate func repeated(_ count: Int) -> String { String(repeating: self, count: count) }
}
