/// A strict RFC 8259 JSON parser that keeps object keys in document order (and duplicates), so
/// the config parser can report problems in reading order.
///
/// Written here rather than using Foundation's `JSONSerialization` to keep key order, to say
/// where a syntax error is, and to bound nesting depth on hostile input.
struct JSONParser {
    private let bytes: [UInt8]
    private var position = 0

    static func parse(_ text: String) throws(JSONParseError) -> ConfigNode {
        var parser = JSONParser(bytes: Array(text.utf8))
        parser.skipByteOrderMark()
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.position == parser.bytes.count else {
            throw parser.error("unexpected text after the JSON value")
        }
        return value
    }

    private init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    // MARK: Values

    private mutating func parseValue(depth: Int) throws(JSONParseError) -> ConfigNode {
        guard depth < ConfigNode.maximumDepth else {
            throw self.error("nested more than \(ConfigNode.maximumDepth) levels deep")
        }
        guard let byte = self.peek() else { throw self.error("unexpected end of input, expected a value") }
        switch byte {
        case UInt8(ascii: "{"): return try self.parseObject(depth: depth)
        case UInt8(ascii: "["): return try self.parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try self.parseString())
        case UInt8(ascii: "t"):
            try self.expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try self.expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try self.expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .number(try self.parseNumber())
        default:
            throw self.error("unexpected character \(Self.show(byte)), expected a value")
        }
    }

    private mutating func parseObject(depth: Int) throws(JSONParseError) -> ConfigNode {
        self.position += 1  // {
        var entries: [ConfigNode.Entry] = []
        self.skipWhitespace()
        if self.peek() == UInt8(ascii: "}") {
            self.position += 1
            return .mapping(entries)
        }
        while true {
            self.skipWhitespace()
            guard self.peek() == UInt8(ascii: "\"") else { throw self.error("expected a string key") }
            let key = try self.parseString()
            self.skipWhitespace()
            try self.expect(UInt8(ascii: ":"))
            self.skipWhitespace()
            let value = try self.parseValue(depth: depth + 1)
            entries.append(ConfigNode.Entry(key: key, value: value))
            self.skipWhitespace()
            switch self.peek() {
            case UInt8(ascii: ","): self.position += 1
            case UInt8(ascii: "}"):
                self.position += 1
                return .mapping(entries)
            default: throw self.error("expected ',' or '}' in an object")
            }
        }
    }

    private mutating func parseArray(depth: Int) throws(JSONParseError) -> ConfigNode {
        self.position += 1  // [
        var items: [ConfigNode] = []
        self.skipWhitespace()
        if self.peek() == UInt8(ascii: "]") {
            self.position += 1
            return .sequence(items)
        }
        while true {
            self.skipWhitespace()
            items.append(try self.parseValue(depth: depth + 1))
            self.skipWhitespace()
            switch self.peek() {
            case UInt8(ascii: ","): self.position += 1
            case UInt8(ascii: "]"):
                self.position += 1
                return .sequence(items)
            default: throw self.error("expected ',' or ']' in an array")
            }
        }
    }

    private mutating func parseString() throws(JSONParseError) -> String {
        self.position += 1  // opening quote
        var scalars = String.UnicodeScalarView()
        var runStart = self.position
        func flushRun(_ parser: JSONParser, upTo end: Int, into scalars: inout String.UnicodeScalarView) {
            if end > runStart {
                scalars.append(contentsOf: String(decoding: parser.bytes[runStart..<end], as: UTF8.self).unicodeScalars)
            }
        }
        while true {
            guard let byte = self.peek() else { throw self.error("unterminated string") }
            switch byte {
            case UInt8(ascii: "\""):
                flushRun(self, upTo: self.position, into: &scalars)
                self.position += 1
                return String(scalars)
            case UInt8(ascii: "\\"):
                flushRun(self, upTo: self.position, into: &scalars)
                self.position += 1
                scalars.append(try self.parseEscape())
                runStart = self.position
            case 0..<0x20:
                throw self.error("control character \(Self.show(byte)) in a string must be escaped")
            default:
                self.position += 1
            }
        }
    }

    private mutating func parseEscape() throws(JSONParseError) -> Unicode.Scalar {
        guard let byte = self.peek() else { throw self.error("unterminated escape") }
        self.position += 1
        switch byte {
        case UInt8(ascii: "\""): return "\""
        case UInt8(ascii: "\\"): return "\\"
        case UInt8(ascii: "/"): return "/"
        case UInt8(ascii: "b"): return "\u{08}"
        case UInt8(ascii: "f"): return "\u{0C}"
        case UInt8(ascii: "n"): return "\n"
        case UInt8(ascii: "r"): return "\r"
        case UInt8(ascii: "t"): return "\t"
        case UInt8(ascii: "u"):
            let first = try self.parseHex4()
            if (0xD800..<0xDC00).contains(first) {
                guard self.peek() == UInt8(ascii: "\\"), self.peek(1) == UInt8(ascii: "u") else {
                    throw self.error("unpaired UTF-16 surrogate in \\u escape")
                }
                self.position += 2
                let second = try self.parseHex4()
                guard (0xDC00..<0xE000).contains(second) else {
                    throw self.error("unpaired UTF-16 surrogate in \\u escape")
                }
                let combined = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                return Unicode.Scalar(combined)!
            }
            guard let scalar = Unicode.Scalar(first) else {
                throw self.error("unpaired UTF-16 surrogate in \\u escape")
            }
            return scalar
        default:
            throw self.error("invalid escape '\\\(Self.show(byte))'")
        }
    }

    private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = self.peek() else { throw self.error("unterminated \\u escape") }
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw self.error("expected a hex digit in \\u escape")
            }
            value = value << 4 | digit
            self.position += 1
        }
        return value
    }

    private mutating func parseNumber() throws(JSONParseError) -> Double {
        let start = self.position
        if self.peek() == UInt8(ascii: "-") { self.position += 1 }
        guard let first = self.peek(), Self.isDigit(first) else { throw self.error("expected a digit") }
        self.position += 1
        if first != UInt8(ascii: "0") {
            self.skipDigits()
        } else if let next = self.peek(), Self.isDigit(next) {
            throw self.error("numbers may not have leading zeros")
        }
        if self.peek() == UInt8(ascii: ".") {
            self.position += 1
            guard let digit = self.peek(), Self.isDigit(digit) else {
                throw self.error("expected a digit after the decimal point")
            }
            self.skipDigits()
        }
        if self.peek() == UInt8(ascii: "e") || self.peek() == UInt8(ascii: "E") {
            self.position += 1
            if self.peek() == UInt8(ascii: "+") || self.peek() == UInt8(ascii: "-") { self.position += 1 }
            guard let digit = self.peek(), Self.isDigit(digit) else {
                throw self.error("expected a digit in the exponent")
            }
            self.skipDigits()
        }
        let text = String(decoding: self.bytes[start..<self.position], as: UTF8.self)
        guard let value = Double(text) else { throw self.error("invalid number \(text)") }
        return value
    }

    // MARK: Lexing helpers

    private func peek(_ offset: Int = 0) -> UInt8? {
        let index = self.position + offset
        return index < self.bytes.count ? self.bytes[index] : nil
    }

    private mutating func skipDigits() {
        while let byte = self.peek(), Self.isDigit(byte) { self.position += 1 }
    }

    private mutating func skipWhitespace() {
        while let byte = self.peek(),
            byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n")
                || byte == UInt8(ascii: "\r")
        {
            self.position += 1
        }
    }

    private mutating func skipByteOrderMark() {
        if self.bytes.starts(with: [0xEF, 0xBB, 0xBF]) { self.position = 3 }
    }

    private mutating func expect(_ byte: UInt8) throws(JSONParseError) {
        guard self.peek() == byte else { throw self.error("expected '\(Character(Unicode.Scalar(byte)))'") }
        self.position += 1
    }

    /// A mistyped literal is reported where it starts (`tru` at its `t`), where the reader looks.
    private mutating func expectLiteral(_ literal: String) throws(JSONParseError) {
        let start = self.position
        for byte in literal.utf8 {
            guard self.peek() == byte else {
                self.position = start
                throw self.error("invalid literal, expected \(literal)")
            }
            self.position += 1
        }
    }

    private static func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    private static func show(_ byte: UInt8) -> String {
        if byte >= 0x20 && byte < 0x7F { return "'\(Character(Unicode.Scalar(byte)))'" }
        return "0x" + String(byte, radix: 16, uppercase: true)
    }

    /// An error at the current position, with 1-based line and column (counting characters, not
    /// bytes: UTF-8 continuation bytes do not advance the column).
    private func error(_ message: String) -> JSONParseError {
        var line = 1
        var column = 1
        for byte in self.bytes[..<min(self.position, self.bytes.count)] {
            if byte == UInt8(ascii: "\n") {
                line += 1
                column = 1
            } else if byte & 0xC0 != 0x80 {
                column += 1
            }
        }
        return JSONParseError(line: line, column: column, message: message)
    }
}
