import NIOCore
import ServeWire

/// Writes a streamed response's body (`ServeResponse.streaming`): each piece goes to the client
/// as it is written. A write waits while the client is behind (its connection's flow control),
/// and throws once the client has gone: the handler should then stop.
public struct ServeBodyWriter: Sendable {
    let writer: any HTTPResponseWriter

    /// Writes to `writer` (the node's response writer).
    public init(_ writer: any HTTPResponseWriter) {
        self.writer = writer
    }

    public func write(_ piece: ByteBuffer) async throws {
        guard piece.readableBytes > 0 else { return }
        try await self.writer.write(piece)
    }

    public func write(_ text: String) async throws {
        try await self.write(ByteBuffer(string: text))
    }
}

/// Sends server-sent events (`ServeResponse.eventStream`), each as soon as it is made, in the
/// format browsers' `EventSource` reads (WHATWG HTML, "Server-sent events").
public struct ServerSentEvents: Sendable {
    let body: ServeBodyWriter

    init(_ body: ServeBodyWriter) {
        self.body = body
    }

    /// One event: `data` (a line per line of it), with an optional type and id.
    public func send(_ data: String, event: String? = nil, id: String? = nil) async throws {
        try await self.body.write(Self.format(data, event: event, id: id))
    }

    /// A comment line, which clients ignore: keeps an idle stream's connection alive.
    public func comment(_ text: String = "") async throws {
        try await self.body.write(": \(Self.oneLine(text))\n\n")
    }

    static func format(_ data: String, event: String?, id: String?) -> String {
        var text = ""
        if let event { text += "event: \(Self.oneLine(event))\n" }
        if let id { text += "id: \(Self.oneLine(id))\n" }
        // A line break inside the data ends a `data:` line; the client joins them with "\n".
        for line in data.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            text += "data: \(line)\n"
        }
        return text + "\n"
    }

    /// Field values cannot hold line breaks (they would end the field).
    private static func oneLine(_ text: String) -> String {
        String(text.map { $0 == "\n" || $0 == "\r" || $0 == "\r\n" ? " " : $0 })
    }
}
