import Foundation
import Testing

@testable import ServeCore

@Suite("JSONValue")
struct JSONValueTests {
    @Test("prints compact JSON with sorted keys")
    func compactSorted() {
        let value: JSONValue = ["b": [1, 2.5, "x"], "a": nil, "c": ["z": true, "y": false]]
        #expect(value.jsonString() == #"{"a":null,"b":[1,2.5,"x"],"c":{"y":false,"z":true}}"#)
    }

    @Test("numbers: whole numbers without a fraction, non-finite as null")
    func numbers() throws {
        #expect(JSONValue.number(2).jsonString() == "2")
        #expect(JSONValue.number(-0.5).jsonString() == "-0.5")
        #expect(JSONValue.number(0.1).jsonString() == "0.1")
        #expect(JSONValue.number(2_147_483_648).jsonString() == "2147483648")
        #expect(JSONValue.number(.infinity).jsonString() == "null")
        #expect(JSONValue.number(.nan).jsonString() == "null")
        #expect(try JSONValue.parse(JSONValue.number(1e-5).jsonString()) == .number(1e-5))
    }

    @Test("strings are escaped")
    func escaping() throws {
        let text = "quote \" backslash \\ newline \n tab \t bell \u{07} é 😀"
        let printed = JSONValue.string(text).jsonString()
        #expect(printed == #""quote \" backslash \\ newline \n tab \t bell \u0007 é 😀""#)
        #expect(try JSONValue.parse(printed) == .string(text))
    }

    @Test("parses every kind of value")
    func parsing() throws {
        let value = try JSONValue.parse(#" {"n": -1.5e2, "s": "a\u00e9\ud83d\ude00\/", "t": true, "f": false, "z": null, "l": [[], {}]} "#)
        #expect(value == ["n": -150, "s": "aé😀/", "t": true, "f": false, "z": nil, "l": [[], [:]]])
        #expect(value["n"]?.doubleValue == -150)
        #expect(value["s"]?.stringValue == "aé😀/")
        #expect(value["missing"] == nil)
    }

    @Test("syntax errors say where", arguments: [
        ("{\"a\" 1}", 1, 6), ("[1, 2", 1, 6), ("{\n  \"a\": tru\n}", 2, 8), ("01", 1, 2), ("[1] x", 1, 5),
        ("\"unterminated", 1, 14), ("{\"a\":1,}", 1, 8),
    ])
    func errors(text: String, line: Int, column: Int) {
        #expect {
            try JSONValue.parse(text)
        } throws: { error in
            guard let error = error as? JSONParseError else { return false }
            return error.line == line && error.column == column
        }
    }

    @Test("deep nesting is refused instead of exhausting the stack")
    func depthLimit() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(deep) }
    }

    @Test("Codable round trip through Foundation")
    func codable() throws {
        let value: JSONValue = ["ms": 250, "name": "x", "list": [true, nil, 0.5]]
        let data = try JSONEncoder().encode(value)
        #expect(try JSONDecoder().decode(JSONValue.self, from: data) == value)
        #expect(try JSONValue.parse(String(decoding: data, as: UTF8.self)) == value)
    }
}
