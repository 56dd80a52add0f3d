package link

import (
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// trimRecord cuts a record's variable parts to the shared limits and
// reports whether it changed anything. Which metric keys stay does not
// depend on map order (the first in sorted order), so a record resent
// after a reconnect is trimmed the same way.
func trimRecord(r *gantrypb.Record) bool {
	changed := false
	trimMap := func(m map[string]float64, n int) {
		if len(m) <= n {
			return
		}
		for _, k := range slices.Sorted(maps.Keys(m))[n:] {
			delete(m, k)
		}
		changed = true
	}
	trimString := func(s *string, n int) {
		if len(*s) <= n {
			return
		}
		cut := n
		for cut > 0 && !utf8.RuneStart((*s)[cut]) {
			cut--
		}
		*s = strings.Clone((*s)[:cut])
		changed = true
	}
	switch b := r.Body.(type) {
	case *gantrypb.Record_Point:
		trimMap(b.Point.GetValues(), limits.MaxKeysPerPoint)
	case *gantrypb.Record_Exit:
		trimMap(b.Exit.GetFinalMetrics(), limits.MaxKeysPerJob)
		trimString(&b.Exit.LogTail, limits.MaxLogTailBytes)
		trimString(&b.Exit.Error, limits.MaxExitErrorBytes)
		trimString(&b.Exit.Signal, limits.MaxSignalBytes)
	case *gantrypb.Record_Event:
		trimString(&b.Event.Message, limits.MaxEventMessageBytes)
		trimString(&b.Event.Kind, limits.MaxEventKindBytes)
	case *gantrypb.Record_Log:
		if len(b.Log.GetData()) > limits.MaxLogChunkBytes {
			b.Log.Data = b.Log.Data[:limits.MaxLogChunkBytes]
			changed = true
		}
	}
	return changed
}
