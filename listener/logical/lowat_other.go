//go:build !unix

package logical

import "errors"

func setRcvLowat(uintptr, int) error { return errors.ErrUnsupported }
