import HTTPTypes

/// What went wrong on an HTTP/2 connection or stream, as the caller of ServeWire sees it.
///
/// Stream-scope failures (a reset, a timeout) end one stream and leave the connection usable;
/// connection-scope failures (GOAWAY, a closed socket, a protocol error) end every stream on the
/// connection. This split follows RFC 9113 §5.4 (stream errors vs. connection errors).
public enum HTTP2Error: Error, Sendable, Hashable, CustomStringConvertible {
    /// The peer (or this side) reset the stream with RST_STREAM and this error code (RFC 9113 §7).
    case streamReset(code: UInt32)
    /// The peer refused the stream before processing it (REFUSED_STREAM, or a stream above the
    /// last-stream-id of a GOAWAY): it is safe to retry on another connection (RFC 9113 §8.7).
    case refused
    /// The connection was told to go away; no new streams may start on it.
    case goAway(code: UInt32, lastStreamID: Int32)
    /// The TCP connection closed while the stream was open.
    case connectionClosed
    /// The request did not complete within its deadline.
    case timeout
    /// The peer violated HTTP/2 or sent something nghttp2 could not process.
    case protocolError(String)
    /// A body could not be decoded (corrupt, truncated or over its size limit).
    case badBody(String)
    /// A body was larger than the limit set for it (decoded size for compressed bodies).
    case bodyTooLarge(limit: Int)
    /// The stream is no longer open for writing (finished, reset or closed).
    case streamClosed
    /// The peer did not accept the connection (refused, unreachable).
    case connectFailed(String)

    public var description: String {
        switch self {
        case .streamReset(let code):
            return "the HTTP/2 stream was reset (\(HTTP2ErrorCodeName.name(code)))"
        case .refused:
            return "the peer refused the stream before processing it; it is safe to retry"
        case .goAway(let code, let lastStreamID):
            return "the peer is closing the connection (GOAWAY \(HTTP2ErrorCodeName.name(code)), last stream \(lastStreamID)); open a new connection"
        case .connectionClosed:
            return "the connection closed while the stream was open"
        case .timeout:
            return "the request did not complete within its deadline"
        case .protocolError(let message):
            return "HTTP/2 protocol error: \(message)"
        case .badBody(let message):
            return "the body could not be decoded: \(message)"
        case .bodyTooLarge(let limit):
            return "the body is larger than the \(limit)-byte limit"
        case .streamClosed:
            return "the stream is no longer open for writing"
        case .connectFailed(let message):
            return "could not connect: \(message)"
        }
    }

    /// Whether the request never reached the peer's application, so sending it again is safe.
    public var isSafeToRetry: Bool {
        switch self {
        case .refused: return true
        case .goAway: return true
        case .connectFailed: return true
        default: return false
        }
    }
}

/// The names of HTTP/2 error codes (RFC 9113 §7), for messages.
enum HTTP2ErrorCodeName {
    static func name(_ code: UInt32) -> String {
        switch code {
        case 0x0: return "NO_ERROR"
        case 0x1: return "PROTOCOL_ERROR"
        case 0x2: return "INTERNAL_ERROR"
        case 0x3: return "FLOW_CONTROL_ERROR"
        case 0x4: return "SETTINGS_TIMEOUT"
        case 0x5: return "STREAM_CLOSED"
        case 0x6: return "FRAME_SIZE_ERROR"
        case 0x7: return "REFUSED_STREAM"
        case 0x8: return "CANCEL"
        case 0x9: return "COMPRESSION_ERROR"
        case 0xa: return "CONNECT_ERROR"
        case 0xb: return "ENHANCE_YOUR_CALM"
        case 0xc: return "INADEQUATE_SECURITY"
        case 0xd: return "HTTP_1_1_REQUIRED"
        default: return "error 0x\(String(code, radix: 16))"
        }
    }
}

/// HTTP/2 error codes used by ServeWire (RFC 9113 §7).
public enum HTTP2ErrorCode {
    public static let noError: UInt32 = 0x0
    public static let protocolError: UInt32 = 0x1
    public static let internalError: UInt32 = 0x2
    public static let refusedStream: UInt32 = 0x7
    public static let cancel: UInt32 = 0x8
    public static let enhanceYourCalm: UInt32 = 0xb
}
