package testenv

import (
	"errors"

	"github.com/emersion/go-smtp"
)

// SendSMTP sends raw from mailFrom to rcpts in one plain SMTP transaction
// at addr and returns the first error: an *smtp.SMTPError when the server
// refused (see SMTPCode).
func SendSMTP(addr, mailFrom string, rcpts []string, raw string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail(mailFrom, nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(raw)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// SMTPCode is the reply code of an SMTP refusal, or 0 for any other error.
func SMTPCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}
