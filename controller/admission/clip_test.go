package admission

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClipAndClipTail(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "abc"},
		{"a×b", 2, "a"}, // × is two bytes: never split it
		{"a×b", 3, "a×"},
	} {
		if got := ClipTail(tt.in, tt.n); len(got) > tt.n || !strings.HasSuffix(tt.in, got) || !utf8.ValidString(got) {
			t.Errorf("ClipTail(%q, %d) = %q", tt.in, tt.n, got)
		}
		if got := Clip(tt.in, tt.n); got != tt.want {
			t.Errorf("Clip(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
